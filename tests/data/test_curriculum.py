"""Curriculum ordering: easy first in stages, ranks together in one order, resume in place."""

import pandas as pd
import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from afm_trainer.data.curriculum import CurriculumSampler, curriculum_keys

KEYS = [float(d) for d in range(1, 6) for _ in range(20)][::-1]  # 100 rows, hardest first on disk


def sampler(rank=0, replicas=1, stages=5, batch=8, keys=KEYS):
    return CurriculumSampler(list(range(len(keys))), keys, stages, batch, replicas, rank)


def test_every_stage_is_easier_than_the_next_and_shuffled_within():
    s = sampler()
    order = s.order(0)
    assert len(order) == len(set(order)) == 96  # 12 whole global batches of 8
    groups = [order[len(order) * k // 5 : len(order) * (k + 1) // 5] for k in range(5)]
    for easier, harder in zip(groups, groups[1:]):
        assert max(KEYS[i] for i in easier) <= min(KEYS[i] for i in harder)
    assert order[:19] != sorted(order[:19])  # shuffled within a stage
    assert s.order(1) != order and s.order(0) == order  # a new shuffle per epoch, the same on re-asking


def test_the_rows_left_out_of_whole_batches_vary_by_epoch():
    """Not always the hardest: over a few epochs every row is trained."""
    s = sampler()
    seen = set().union(*(s.order(epoch) for epoch in range(10)))
    assert seen == set(range(100))


def test_ranks_together_train_the_global_order_batch_by_batch():
    replicas, per_rank = 2, 4
    loaders = [
        StatefulDataLoader(list(range(100)), batch_size=per_rank, sampler=sampler(r, replicas), drop_last=True)
        for r in range(replicas)
    ]
    order = loaders[0].sampler.order(0)
    for step, batches in enumerate(zip(*loaders)):
        rows = sorted(int(i) for b in batches for i in b)
        assert rows == sorted(order[step * 8 : (step + 1) * 8])
    assert len(loaders[0]) == 12


@pytest.mark.parametrize("stopped_after", [3, 12])  # mid-epoch, and at the end of an epoch
def test_a_restored_loader_continues_in_the_same_place(stopped_after):
    def loader():
        return StatefulDataLoader(list(range(100)), batch_size=8, sampler=sampler(), drop_last=True)

    reference = loader()
    reference.sampler.set_epoch(1)
    batches = [b.tolist() for b in reference]

    first = loader()
    first.sampler.set_epoch(1)
    it = iter(first)
    for _ in range(stopped_after):
        next(it)
    state = first.state_dict()

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # verl sets the epoch after restoring, before iterating
    assert [b.tolist() for b in resumed] == batches[stopped_after:]


def test_keys_come_from_a_numeric_column_and_bad_ones_name_the_row():
    class Data:
        dataframe = pd.DataFrame({"difficulty": [3, 1, 2], "answer": ["a", "b", "c"]})

        def __len__(self):
            return 3

    assert curriculum_keys(Data(), "difficulty") == [3.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="no such column.*difficulty, answer"):
        curriculum_keys(Data(), "level")
    with pytest.raises(ValueError, match="row 0 has 'a', not a number"):
        curriculum_keys(Data(), "answer")
    Data.dataframe = pd.DataFrame({"difficulty": [3.0, None, 2.0]})
    with pytest.raises(ValueError, match="row 1 has nan"):
        curriculum_keys(Data(), "difficulty")


def test_length_keys_are_the_tokens_the_dataset_builds(tmp_path, nano_model):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from afm_trainer.data.sft_dataset import AgentSFTDataset

    path = tmp_path / "d.parquet"
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    long = [{"role": "user", "content": "hi " * 30}, {"role": "assistant", "content": "no " * 20}]
    pd.DataFrame({"messages": [long, short]}).to_parquet(path)
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    dataset = AgentSFTDataset([str(path)], tokenizer, OmegaConf.create({"pad_mode": "no_padding"}))
    keys = curriculum_keys(dataset, "length")
    assert keys == [float(len(dataset[i]["input_ids"])) for i in range(2)]
    assert keys[0] > keys[1] + 40


def test_a_set_smaller_than_one_global_batch_is_refused():
    with pytest.raises(ValueError, match="5 training rows do not fill one global batch of 8"):
        sampler(keys=KEYS[:5])
