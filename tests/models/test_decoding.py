"""The rollout's KV cache: written in place, it must hold exactly what a concatenating
cache holds, through growth of its buffer and rows leaving the batch."""

import torch


def test_growing_cache_holds_what_was_appended_through_growth_and_row_selection():
    from afm_trainer.models.decoding import GrowingKVLayer

    layer = GrowingKVLayer(room=3)  # a small buffer: several growths in a few steps
    expected_keys = expected_values = None
    for step, new in enumerate([5, 1, 1, 1, 1, 4, 1, 1]):
        if step == 4:  # rows 0 and 2 of 4 go on
            rows = torch.tensor([0, 2])
            layer.batch_select_indices(rows)
            expected_keys, expected_values = expected_keys[rows], expected_values[rows]
        batch = 4 if step < 4 else 2
        keys, values = torch.randn(2, batch, 3, new, 8).unbind(0)
        got_keys, got_values = layer.update(keys, values)
        expected_keys = keys if expected_keys is None else torch.cat([expected_keys, keys], dim=2)
        expected_values = values if expected_values is None else torch.cat([expected_values, values], dim=2)
        assert torch.equal(got_keys, expected_keys) and torch.equal(got_values, expected_values)
        assert layer.get_seq_length() == expected_keys.shape[2]
