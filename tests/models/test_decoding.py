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


def test_merged_caches_hold_both_batches_right_aligned_over_zeros():
    from afm_trainer.models.decoding import GrowingKVLayer

    for running_length, joining_length in [(5, 7), (7, 3)]:  # the joining rows longer, then shorter
        running, joining = GrowingKVLayer(room=2), GrowingKVLayer(room=2)
        running_keys, joining_keys = torch.randn(2, 3, running_length, 8), torch.randn(1, 3, joining_length, 8)
        running.update(running_keys, running_keys + 1)
        joining.update(joining_keys, joining_keys + 1)
        length = max(running_length, joining_length)
        running.merge(joining, length)
        assert running.keys.shape == (3, 3, length, 8) and running.get_seq_length() == length
        assert torch.equal(running.keys[:2, :, length - running_length :], running_keys)
        assert torch.equal(running.values[:2, :, length - running_length :], running_keys + 1)
        assert torch.equal(running.keys[2:, :, length - joining_length :], joining_keys)
        # the new left padding: zeros, never NaN
        assert not running.keys[:2, :, : length - running_length].any()
        assert not running.keys[2:, :, : length - joining_length].any()
        new = torch.randn(3, 3, 1, 8)
        keys, _ = running.update(new, new)  # decoding goes on in the merged buffer
        assert torch.equal(keys[:, :, length:], new) and torch.equal(
            keys[2:, :, length - joining_length : length], joining_keys
        )
