"""The DPO trainer's glue (``PairCollator`` -> ``PreferenceTrainer._batch`` -> verl's engine
forward -> ``preference_loss``: ``sequence_logps``, ``as_pairs``, the pair weights, Dr-DPO's
micro-batch objective) checked against numbers computed here without it: each answer's
log-probability from a plain transformers forward of the chat-template tokens, and the
losses written out with ``math``. And the resume: a run killed after a checkpoint and
resumed trains the same pairs, in the same order, as a run never interrupted.

verl's engine runs for real (its ``forward_backward_batch``: micro-batching with the pairs
kept whole, the packed no-padding forward, the log-prob layout), on the nano model unwrapped
(no FSDP), in a one-rank gloo process group. Every pair has its own chosen and rejected
answer, prompt length and weight, so a chosen/rejected swap or a pair mixed up with another
changes the numbers."""

import json
import math
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from afm_trainer.data.pairs import PAIR_SCHEMA

# (prompt, chosen, rejected, weight): prompts of 1 to 13 words; the chosen answer longer
# than the rejected one in some pairs, shorter in others.
PAIRS = [
    ("hi", "yes indeed", "no way at all", 1.0),
    ("Question: what is the colour of the sky on a clear day?", "blue", "green or maybe red", 2.0),
    ("2+2?", "4", "five", 0.5),
    ("Name a fruit that grows on trees", "apple pie is a dessert", "x", 3.0),
]
# The references: ref_chosen = plain chosen log-prob - A[i], ref_rejected = plain rejected - B[i],
# so the policy's gap (pc - rc) - (pr - rr) is A[i] - B[i] = 1.5, -1.5, 1.5, -1.0: both signs,
# and a swap of chosen and rejected (the gap's sign) changes the weighted loss.
A = [1.0, -0.5, 2.0, 0.25]
B = [-0.5, 1.0, 0.5, 1.25]
ORDER = [3, 0, 2, 1]  # the pairs in the batch, not in dataset order


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def conversation(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def write_pair_file(path, pairs) -> str:
    rows = [
        {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "pair_id": f"p{i}",
            "source": "test",
            "weight": weight,
        }
        for i, (prompt, chosen, rejected, weight) in enumerate(pairs)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), path)
    return str(path)


def dpo_config(model: str, train_file: str, out_dir, *overrides: str):
    """The trainer's config as the recipe composes it (config/dpo.yaml on CPU)."""
    from hydra import compose, initialize_config_dir

    from afm_trainer.recipes.dpo.main import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(
            config_name="dpo",
            overrides=[
                "device=cpu",
                f"model.path={model}",
                f"data.train_files=[{train_file}]",
                "data.val_files=null",
                f"trainer.default_local_dir={out_dir}",
                "trainer.test_freq=-1",
                "trainer.logger=[console]",
                "data.num_workers=0",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """One gloo rank, as torchrun gives the trainer (verl's engine and checkpoints use it)."""
    if dist.is_initialized():
        yield
        return
    store = tmp_path_factory.mktemp("process_group") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def tokenizer(nano_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(nano_model)


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    return write_pair_file(tmp_path_factory.mktemp("pairs") / "pairs.parquet", PAIRS)


@pytest.fixture(scope="module")
def plain(nano_model, tokenizer):
    """Per pair: (tokens of prompt + chosen, of prompt + rejected, chosen log-prob, rejected
    log-prob, chosen answer's token count, rejected answer's). A plain forward of the whole conversation as the
    chat template renders it; the answer's tokens are those after the prompt's generation
    prompt (``<|im_start|>assistant\\n``): its text and its ``<|im_end|>``, not the newline after."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(nano_model, dtype=torch.float32).eval()

    def answer_logp(prompt: str, answer: str):
        full = tokenizer.apply_chat_template(conversation(prompt, answer), tokenize=True)["input_ids"]
        head = tokenizer.apply_chat_template(conversation(prompt, "")[:1], tokenize=True, add_generation_prompt=True)[
            "input_ids"
        ]
        assert full[: len(head)] == head and tokenizer.decode(full[-2:]) == "<|im_end|>\n"
        answer_positions = range(len(head), len(full) - 1)
        assert tokenizer.decode([full[j] for j in answer_positions]) == answer + "<|im_end|>"
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
        return full, sum(float(logp[j - 1, full[j]]) for j in answer_positions), len(answer_positions)

    out = []
    for prompt, chosen, rejected, _ in PAIRS:
        chosen_ids, pc, chosen_tokens = answer_logp(prompt, chosen)
        rejected_ids, pr, rejected_tokens = answer_logp(prompt, rejected)
        out.append((chosen_ids, rejected_ids, pc, pr, chosen_tokens, rejected_tokens))
    return out


@pytest.fixture(scope="module")
def engine(process_group, nano_model):
    """verl's CPU FSDP engine (the class the trainer gets on CPU) around the nano model as the
    recipe loads it (``sdpa_varlen`` attention, fp32), without FSDP wrapping or an optimizer:
    its ``forward_backward_batch`` / ``forward_step`` are verl's code."""
    from transformers import AutoModelForCausalLM

    import afm_trainer.models.attention  # noqa: F401  (registers sdpa_varlen)
    from afm_trainer.verl_ext.cpu_engine import CPUFSDPEngineWithLMHead

    engine = object.__new__(CPUFSDPEngineWithLMHead)
    engine.module = AutoModelForCausalLM.from_pretrained(
        nano_model, dtype=torch.float32, attn_implementation="sdpa_varlen"
    )
    engine.ulysses_device_mesh = None
    engine.ulysses_sequence_parallel_size = 1
    engine.use_ulysses_sp = False
    engine.pad_to_length = False
    engine._autocast_dtype = torch.float32
    engine.engine_config = types.SimpleNamespace(use_no_sync_for_gradient_accumulation=False)
    return engine


def train_step(engine, tokenizer, config, batch, step: int = 1):
    """What ``PreferenceTrainer.fit`` does with a loader batch, up to the engine's forward and
    backward: this step's settings, ``_batch``, then verl's ``forward_backward_batch`` with
    ``preference_loss``. Returns (settings, the engine's output)."""
    from verl.utils import tensordict_utils as tu

    from afm_trainer.recipes.dpo.trainer import PreferenceTrainer, preference_loss, settings_at

    trainer = object.__new__(PreferenceTrainer)  # _batch's inputs, without building an engine
    trainer.config, trainer.engine, trainer.device_name = config, engine, "cpu"
    trainer.model_config = types.SimpleNamespace(tokenizer=tokenizer)
    trainer.global_batch_size = config.data.train_batch_size
    trainer.live_reference = False
    settings = settings_at(config.dpo, step, steps_per_epoch=1)
    data = trainer._batch(batch, settings)
    tu.assign_non_tensor(data, return_model_output=True)  # keep the log-probs, which training discards
    engine.module.zero_grad()
    output = engine.forward_backward_batch(data, loss_function=preference_loss, forward_only=False)
    return settings, output


def references(plain) -> torch.Tensor:
    return torch.tensor([[pc - a, pr - b] for (_, _, pc, pr, *_), a, b in zip(plain, A, B)])


def hand_losses(plain, beta: float) -> list[float]:
    """-log sigmoid(beta * ((pc - rc) - (pr - rr))) per pair, from the plain forward's numbers."""
    refs = references(plain).tolist()
    return [
        -logsigmoid(beta * ((pc - rc) - (pr - rr))) for (_, _, pc, pr, *_), (rc, rr) in zip(plain, refs, strict=True)
    ]


def test_the_trainers_chosen_and_rejected_log_probs_and_dpo_loss_match_a_plain_forward(
    tmp_path, engine, tokenizer, nano_model, pair_file, plain
):
    from afm_trainer.data.pair_dataset import PairCollator, PairDataset
    from afm_trainer.recipes.dpo.trainer import as_pairs, sequence_logps

    # dynamic batching with a small budget: the 4 pairs go through several micro-batches
    config = dpo_config(
        nano_model, pair_file, tmp_path, "dpo.beta=0.5", "data.train_batch_size=4", "data.max_token_len_per_gpu=90"
    )
    dataset = PairDataset([pair_file], tokenizer, config.data)
    for i, (chosen_ids, rejected_ids, *_) in enumerate(plain):  # the rows the trainer scores are these tokens
        assert dataset[i]["chosen"]["input_ids"].tolist() == chosen_ids
        assert dataset[i]["rejected"]["input_ids"].tolist() == rejected_ids
    batch = PairCollator(references(plain))([dataset[i] for i in ORDER])
    assert batch["pair_index"].tolist() == [3, 3, 0, 0, 2, 2, 1, 1]

    settings, output = train_step(engine, tokenizer, config, batch)
    metrics = output["metrics"]
    assert settings["loss_type"] == "sigmoid" and settings["beta"] == 0.5
    assert len(metrics["pairs"]) >= 2 and sum(metrics["pairs"]) == 4  # several micro-batches, every pair once

    # The engine's log-probs (rows back in batch order), summed over each answer and paired up
    # as preference_loss pairs them: pair p's row is as_pairs' row p (pairs sorted by index).
    logp, tokens = sequence_logps(output["model_output"]["log_probs"], batch["loss_mask"])
    pairs = as_pairs(logp, batch["pair_index"], batch["is_chosen"])
    counts = as_pairs(tokens, batch["pair_index"], batch["is_chosen"])
    for p, (_, _, pc, pr, chosen_tokens, rejected_tokens) in enumerate(plain):
        assert pairs[p].tolist() == pytest.approx([pc, pr], abs=1e-3), f"pair {p}: (chosen, rejected) log-probs"
        assert counts[p].tolist() == [chosen_tokens, rejected_tokens], f"pair {p}: scored tokens"
    assert all(abs(pc - pr) > 1 for _, _, pc, pr, *_ in plain)  # a swap would show

    # The step's loss (verl sums its micro-batches') is the weighted mean of DPO's losses.
    weights = [w for *_, w in PAIRS]
    expected = sum(w * loss for w, loss in zip(weights, hand_losses(plain, 0.5))) / sum(weights)
    assert sum(output["loss"]) == pytest.approx(expected, rel=1e-4)
    # and its metrics (sums over pairs, per micro-batch): the chosen and the rejected log-probs
    # and rewards, the accuracy of the margins (gaps 1.5, -1.5, 1.5, -1.0: two of four positive)
    assert sum(metrics["sum/logps/chosen"]) == pytest.approx(sum(p[2] for p in plain), abs=1e-3)
    assert sum(metrics["sum/logps/rejected"]) == pytest.approx(sum(p[3] for p in plain), abs=1e-3)
    assert sum(metrics["sum/logratio/chosen"]) == pytest.approx(sum(A), abs=1e-3)
    assert sum(metrics["sum/logratio/rejected"]) == pytest.approx(sum(B), abs=1e-3)
    assert sum(metrics["sum/rewards/margin"]) == pytest.approx(0.5 * (sum(A) - sum(B)), abs=1e-3)
    assert sum(metrics["sum/rewards/accuracy"]) == 2.0


@pytest.mark.parametrize("weighted", [True, False], ids=["pair_weights", "equal_weights"])
def test_dr_dpo_combines_each_micro_batchs_pair_losses_by_log_mean_exp(
    tmp_path, engine, tokenizer, nano_model, pair_file, plain, weighted
):
    """Dr-DPO (Wu et al. 2024): -beta' * log mean_i exp(-loss_i / beta') over a batch; the
    trainer takes it over each micro-batch, the mean weighted by the pairs' weights, and
    weighs each micro-batch by its share of the step's total weight. beta' comes from
    dpo.dr_dpo_beta, the loss type here from the schedule (from step 2)."""
    from afm_trainer.data.pair_dataset import PairCollator, PairDataset

    beta, bp = 0.5, 0.3
    config = dpo_config(
        nano_model,
        pair_file,
        tmp_path,
        f"dpo.beta={beta}",
        f"dpo.dr_dpo_beta={bp}",
        "dpo.schedule=[{from_step:2,loss_type:dr_dpo}]",
        "data.train_batch_size=4",
        # static micro-batches of 2 pairs, in batch order: pairs (3, 0) then (2, 1)
        "data.use_dynamic_bsz=false",
        "data.micro_batch_size_per_gpu=2",
    )
    dataset = PairDataset([pair_file], tokenizer, config.data)
    batch = PairCollator(references(plain))([dataset[i] for i in ORDER])
    weights = [w for *_, w in PAIRS] if weighted else [1.0] * len(PAIRS)
    if not weighted:
        batch["weight"] = torch.ones_like(batch["weight"])

    settings, output = train_step(engine, tokenizer, config, batch, step=2)
    assert settings["loss_type"] == "dr_dpo" and settings["dr_dpo_beta"] == bp
    assert output["metrics"]["pairs"] == [2.0, 2.0]

    losses = hand_losses(plain, beta)
    total = sum(weights)
    expected = 0.0
    for group in ([3, 0], [2, 1]):
        group_weight = sum(weights[i] for i in group)
        mean = sum(weights[i] * math.exp(-losses[i] / bp) for i in group) / group_weight
        expected += group_weight / total * (-bp * math.log(mean))
    assert sum(output["loss"]) == pytest.approx(expected, rel=1e-4)
    # Not the weighted mean of the losses (what sigmoid gives): beta' matters at this scale.
    plain_mean = sum(w * loss for w, loss in zip(weights, losses)) / total
    assert abs(expected - plain_mean) > 0.01


# --- resume -----------------------------------------------------------------------------

# 12 pairs, 4 a step: 3 steps an epoch, 3 epochs; a checkpoint every 2 steps (2, 4, 6, 8, 9).
RESUME = ["data.train_batch_size=4", "trainer.total_epochs=3", "trainer.save_freq=2"]
STEPS = 9


class Killed(Exception):
    pass


class RecordingClient:
    """verl's TrainingWorker as the trainer uses it: ``infer_batch`` gives each row's token
    log-probs (here minus the id of the token scored, so a row's reference log-prob names its
    tokens), ``train_batch`` records the step's rows and, at step ``kill_at``, raises as a
    killed process would stop."""

    def __init__(self, kill_at=None):
        self.steps, self.kill_at = [], kill_at

    def set_loss_fn(self, loss_fn):
        self.loss_fn = loss_fn

    def reset(self):
        pass

    def infer_batch(self, data):
        ids = data["input_ids"]
        values = -torch.roll(ids.values(), -1).double()
        return {"log_probs": torch.nested.nested_tensor_from_jagged(values, offsets=ids.offsets())}

    def train_batch(self, data):
        from verl.utils import tensordict_utils as tu

        if len(self.steps) + 1 == self.kill_at:
            raise Killed
        ids = data["input_ids"]
        rows = [
            (int(index), bool(chosen), tuple(row.tolist()), float(ref))
            for index, chosen, row, ref in zip(data["pair_index"], data["is_chosen"], ids.unbind(), data["ref_logp"])
        ]
        self.steps.append(rows)
        n = float(len(rows) // 2)
        metrics = {"loss": 0.0, "pairs": [n], "kept_pairs": [n], "micro_batches": [1.0]}
        return tu.get_tensordict(tensor_dict={}, non_tensor_dict={"metrics": metrics})


class CheckpointOnlyEngine:
    """The engine's side of verl's CheckpointHandler (model and optimizer state: nothing to
    keep here); the handler itself, and the data loader state it saves, are verl's."""

    def get_data_parallel_rank(self):
        return 0

    def get_data_parallel_size(self):
        return 1

    def get_data_parallel_group(self):
        return None

    def is_mp_src_rank_with_outputs(self):
        return True

    def save_checkpoint(self, local_path, global_step, max_ckpt_to_keep=None):
        import os

        os.makedirs(local_path, exist_ok=True)

    def load_checkpoint(self, path):
        pass


def run_trainer(monkeypatch, config, kill_at=None):
    """The real PreferenceTrainer (verl's __init__, the project's loader, collator, reference
    file, epoch-boundary fix, fit loop and verl's checkpoints) with the engine replaced."""
    from verl.trainer.sft_trainer import SFTTrainer

    from afm_trainer.recipes.dpo.trainer import PreferenceTrainer

    client = RecordingClient(kill_at)

    def build_engine(self):
        self.training_client, self.engine = client, CheckpointOnlyEngine()

    monkeypatch.setattr(SFTTrainer, "_build_engine", build_engine)
    trainer = PreferenceTrainer(config)
    try:
        trainer.fit()
    except Killed:
        pass
    return trainer.resume_global_step, client.steps


@pytest.mark.parametrize("killed_after", [4, 6], ids=["mid_epoch", "end_of_epoch"])
def test_a_resumed_run_trains_the_same_pairs_in_the_same_order(
    tmp_path, monkeypatch, process_group, nano_model, tokenizer, killed_after
):
    # every pair its own chosen and rejected answer (and prompt length)
    pairs = [(f"Question {i}: " + "alpha " * i, f"yes {i}", f"no {i}" + " beta" * (i % 3), 1.0) for i in range(12)]
    pair_file = write_pair_file(tmp_path / "pairs.parquet", pairs)

    _, full = run_trainer(monkeypatch, dpo_config(nano_model, pair_file, tmp_path / "full", *RESUME))
    assert len(full) == STEPS

    # Each step's rows are whole pairs, chosen then rejected: their own tokens and reference.
    def tokens(prompt, answer):
        return tuple(tokenizer.apply_chat_template(conversation(prompt, answer), tokenize=True)["input_ids"])

    for rows in full:
        for chosen, rejected in zip(rows[::2], rows[1::2]):
            index = chosen[0]
            prompt, chosen_answer, rejected_answer, _ = pairs[index]
            assert (chosen[:2], rejected[:2]) == ((index, True), (index, False))
            assert (chosen[2], rejected[2]) == (tokens(prompt, chosen_answer), tokens(prompt, rejected_answer))
            assert chosen[3] != rejected[3]
    # Each epoch trains every pair once, in a new order.
    epochs = [[row[0] for step in full[e * 3 : e * 3 + 3] for row in step[::2]] for e in range(3)]
    assert all(sorted(order) == list(range(12)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3

    # Killed during the step after a checkpoint, then run again in the same folder.
    out = tmp_path / "killed"
    config = dpo_config(nano_model, pair_file, out, *RESUME)
    _, before = run_trainer(monkeypatch, config, kill_at=killed_after + 1)
    assert before == full[:killed_after]
    resumed_at, after = run_trainer(monkeypatch, config)
    assert resumed_at == killed_after
    assert len(after) == STEPS - killed_after
    for step, (got, expected) in enumerate(zip(after, full[killed_after:]), start=killed_after + 1):
        assert [row[0] for row in got[::2]] == [row[0] for row in expected[::2]], f"pair order at step {step}"
        assert got == expected, f"rows at step {step}"


# --- curriculum ---------------------------------------------------------------------------

# (chosen words, rejected words) per pair, each word one token (" a"); the prompt is the same.
# By the longer answer (a pair's `length`) the 4 shortest are pairs 2, 6, 1, 4 (2, 5, 6, 7
# words); by the sum they would be 2, 3, 6 and 0 or 5; by the chosen answer 0, 2, 5, 6.
ANSWER_WORDS = [(1, 10), (6, 6), (2, 2), (9, 1), (7, 7), (3, 8), (5, 5), (12, 1)]
# A column of the pair file beyond its schema, and the weights, as curriculum keys.
DIFFICULTY = [3, 1, 4, 1, 5, 9, 2, 6]
WEIGHTS = [0.5, 2.0, 1.0, 0.25, 3.0, 1.5, 0.75, 1.25]
CURRICULUM = ["data.train_batch_size=4", "trainer.total_epochs=2", "trainer.save_freq=-1"]


def curriculum_pair_file(path) -> str:
    words = lambda n: " ".join(["a"] * n)  # noqa: E731
    rows = [
        {
            "prompt": [{"role": "user", "content": "Say a few words."}],
            "chosen": [{"role": "assistant", "content": words(c)}],
            "rejected": [{"role": "assistant", "content": words(r)}],
            "pair_id": f"p{i}",
            "source": "test",
            "weight": weight,
            "difficulty": difficulty,
        }
        for i, ((c, r), weight, difficulty) in enumerate(zip(ANSWER_WORDS, WEIGHTS, DIFFICULTY))
    ]
    schema = PAIR_SCHEMA.append(pa.field("difficulty", pa.int64()))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


@pytest.mark.parametrize(
    "key, stages",
    [
        ("length", [{2, 6, 1, 4}, {5, 3, 0, 7}]),  # the longer answer: 2 5 6 7 | 8 9 10 12 words
        ("difficulty", [{1, 3, 6, 0}, {2, 4, 7, 5}]),  # 1 1 2 3 | 4 5 6 9
        ("weight", [{3, 0, 6, 2}, {7, 5, 1, 4}]),  # 0.25 0.5 0.75 1 | 1.25 1.5 2 3
    ],
)
def test_a_curriculum_orders_the_pairs_easy_first(tmp_path, monkeypatch, process_group, nano_model, key, stages):
    """DPO with data.curriculum: 8 pairs, 4 a step, 2 stages of one step each, so every
    epoch's first step trains the 4 easiest pairs (in some order) and its second the rest."""
    pair_file = curriculum_pair_file(tmp_path / "pairs.parquet")
    out = tmp_path / "out"
    config = dpo_config(
        nano_model, pair_file, out, *CURRICULUM, f"data.curriculum.key={key}", "data.curriculum.stages=2"
    )
    _, steps = run_trainer(monkeypatch, config)
    trained = [{row[0] for row in step[::2]} for step in steps]
    assert trained == stages * 2
    with open(out / "data_order.jsonl") as f:
        order = [json.loads(line) for line in f]
    assert [set(line["rows"]) for line in order] == stages * 2
    keys = {i: k for line in order for i, k in zip(line["rows"], line[key])}
    if key == "length":  # the longer conversation's tokens: one more per word of the longer answer
        assert {i: keys[i] - keys[2] for i in keys} == {i: max(c, r) - 2 for i, (c, r) in enumerate(ANSWER_WORDS)}
    else:
        assert keys == dict(enumerate(map(float, DIFFICULTY if key == "difficulty" else WEIGHTS)))


def test_a_curriculum_key_the_pair_file_lacks_names_the_pair_columns(tmp_path, tokenizer, nano_model):
    from afm_trainer.data.curriculum import curriculum_keys
    from afm_trainer.data.pair_dataset import PairDataset

    pair_file = curriculum_pair_file(tmp_path / "pairs.parquet")
    dataset = PairDataset([pair_file], tokenizer, dpo_config(nano_model, pair_file, tmp_path).data)
    with pytest.raises(ValueError, match=r"'score': no such column .*\(columns: pair_id, source, weight, difficulty;"):
        curriculum_keys(dataset, "score")
    with pytest.raises(ValueError, match="'pair_id': training row 0 has 'p0', not a number"):
        curriculum_keys(dataset, "pair_id")
