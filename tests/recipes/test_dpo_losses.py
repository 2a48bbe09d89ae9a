"""The DPO trainer's per-pair losses, checked against their formulas written out here with
``math`` on floats, independently of the module."""

import math

import pytest
import torch

from afm_trainer.recipes.dpo.losses import (
    LOSS_TYPES,
    dr_dpo_objective,
    keep_mask_drop_top,
    nll_per_pair,
    pair_losses,
    pair_metrics,
)

# (policy_chosen, policy_rejected, ref_chosen, ref_rejected); gaps h = 1.5, -3, 0, 7.75, -1.5
PAIRS = [
    (-10.0, -12.0, -11.0, -11.5),
    (-20.0, -15.0, -19.0, -17.0),
    (-5.0, -5.0, -5.0, -5.0),
    (-30.5, -40.25, -33.0, -35.0),
    (-8.0, -3.0, -9.5, -6.0),
]
LN2 = 0.6931


def tensors(pairs=PAIRS, dtype=torch.float64):
    return [torch.tensor(column, dtype=dtype) for column in zip(*pairs)]


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def gap(pc, pr, rc, rr) -> float:
    return (pc - rc) - (pr - rr)


def sigmoid_loss(h: float, beta: float, ls: float = 0.0) -> float:
    return -(1 - ls) * logsigmoid(beta * h) - ls * logsigmoid(-beta * h)


def close(tensor: torch.Tensor, expected: list[float]) -> bool:
    return torch.allclose(tensor, torch.tensor(expected, dtype=tensor.dtype), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_type", ["sigmoid", "dr_dpo"])
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_sigmoid_and_dr_dpo_per_pair_loss_match_the_formula(loss_type, beta):
    losses = pair_losses(*tensors(), loss_type=loss_type, beta=beta)
    assert close(losses, [sigmoid_loss(gap(*p), beta) for p in PAIRS])
    assert sorted({gap(*p) > 0 for p in PAIRS}) == [False, True]  # both signs of margin are covered


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_label_smoothing_is_cdpo(beta):
    losses = pair_losses(*tensors(), loss_type="sigmoid", beta=beta, label_smoothing=0.1)
    assert close(losses, [sigmoid_loss(gap(*p), beta, 0.1) for p in PAIRS])
    # h = 1.5, beta = 1: -0.9 * log(sigmoid(1.5)) - 0.1 * log(sigmoid(-1.5))
    one = pair_losses(*tensors(PAIRS[:1]), loss_type="sigmoid", beta=1.0, label_smoothing=0.1)
    assert round(float(one[0]), 4) == 0.3514


@pytest.mark.parametrize("loss_type", ["sigmoid", "dr_dpo", "sigmoid_centred"])
@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_policy_equal_to_reference_gives_ln2(loss_type, ls):
    pc, pr = (
        torch.tensor([-3.0, -50.0, -7.5], dtype=torch.float64),
        torch.tensor([-4.0, -1.0, -9.0], dtype=torch.float64),
    )
    losses = pair_losses(pc, pr, pc.clone(), pr.clone(), loss_type=loss_type, beta=0.1, label_smoothing=ls)
    assert [round(float(x), 4) for x in losses] == [LN2] * 3


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_matches_the_formula(beta):
    losses = pair_losses(*tensors(), loss_type="ipo", beta=beta)
    assert close(losses, [(gap(*p) - 1 / (2 * beta)) ** 2 for p in PAIRS])
    pc = torch.tensor([-3.0, -8.0], dtype=torch.float64)
    at_reference = pair_losses(pc, pc - 1, pc.clone(), pc - 1, loss_type="ipo", beta=beta)
    assert close(at_reference, [(1 / (2 * beta)) ** 2] * 2)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_cal_dpo_matches_the_formula(beta):
    target = 1 / (2 * beta)
    expected = [
        -logsigmoid((pc - rc) - (pr - rr)) + 0.5 * ((pc - rc - target) ** 2 + (pr - rr + target) ** 2)
        for pc, pr, rc, rr in PAIRS
    ]
    assert close(pair_losses(*tensors(), loss_type="cal_dpo", beta=beta), expected)


def test_cal_dpo_value():
    # r_c = 1, r_r = -0.5, beta = 0.5 (targets +-1): -log(sigmoid(1.5)) + 0.5 * (0 + 0.25)
    losses = pair_losses(*tensors(PAIRS[:1]), loss_type="cal_dpo", beta=0.5)
    assert round(float(losses[0]), 4) == 0.3264
    # At the reference both log-ratios are 0: ln 2 + (1 / (2 beta))^2
    pc = torch.tensor([-3.0], dtype=torch.float64)
    assert round(float(pair_losses(pc, pc - 2, pc, pc - 2, loss_type="cal_dpo", beta=0.1)[0]), 4) == round(LN2 + 25, 4)


def test_sigmoid_centred_subtracts_the_batch_mean_gap():
    beta = 0.5
    mean = sum(gap(*p) for p in PAIRS) / len(PAIRS)
    losses = pair_losses(*tensors(), loss_type="sigmoid_centred", beta=beta)
    assert close(losses, [sigmoid_loss(gap(*p) - mean, beta) for p in PAIRS])


def test_sigmoid_centred_gives_ln2_when_all_gaps_are_equal():
    pairs = [(-10.0, -12.0, -11.0, -12.0), (-3.0, -30.0, -5.0, -31.0), (-7.0, -1.0, -8.0, -1.0)]  # h = 1 each
    assert [gap(*p) for p in pairs] == [1.0, 1.0, 1.0]
    losses = pair_losses(*tensors(pairs), loss_type="sigmoid_centred", beta=2.0)
    assert [round(float(x), 4) for x in losses] == [LN2] * 3


def test_sigmoid_centred_mean_is_not_a_gradient_path():
    beta = 0.5
    pc, pr, rc, rr = tensors()
    pc.requires_grad_(True)
    pair_losses(pc, pr, rc, rr, loss_type="sigmoid_centred", beta=beta).sum().backward()
    mean = sum(gap(*p) for p in PAIRS) / len(PAIRS)
    # d/d pc_i of -logsigmoid(beta * (h_i - m)) with m held constant: -beta * sigmoid(-beta * (h_i - m))
    expected = [-beta / (1 + math.exp(beta * (gap(*p) - mean))) for p in PAIRS]
    assert close(pc.grad, expected)


def test_dr_dpo_objective_matches_the_formula_and_its_limits():
    losses = torch.tensor([0.2, 1.7, 0.05, 3.0, 0.9], dtype=torch.float64)
    values = losses.tolist()
    for bp in (0.3, 1.0, 5.0):
        expected = -bp * math.log(sum(math.exp(-x / bp) for x in values) / len(values))
        assert math.isclose(float(dr_dpo_objective(losses, bp)), expected, rel_tol=1e-12)
    assert math.isclose(float(dr_dpo_objective(losses, 1e7)), sum(values) / len(values), abs_tol=1e-6)
    assert math.isclose(float(dr_dpo_objective(losses, 1e-4)), min(values), abs_tol=1e-3)
    # Stable where exp(-loss / beta') underflows
    assert math.isclose(float(dr_dpo_objective(losses + 1000, 1e-3)), 1000.05, abs_tol=1e-2)
    with pytest.raises(ValueError, match="beta_prime"):
        dr_dpo_objective(losses, 0.0)


def test_keep_mask_drops_the_largest_scores():
    scores = torch.tensor([0.3, 2.0, 0.1, 2.0, 1.5, 0.7], dtype=torch.float64)
    assert keep_mask_drop_top(scores, 0.5).tolist() == [True, False, True, False, False, True]
    assert keep_mask_drop_top(scores, 0.4).tolist() == [True, False, True, False, True, True]  # floor(2.4) = 2
    # A tie at the cut: the later of the equal scores goes first.
    assert keep_mask_drop_top(scores, 1 / 6).tolist() == [True, True, True, False, True, True]
    assert keep_mask_drop_top(scores, 0.0).tolist() == [True] * 6
    assert keep_mask_drop_top(scores, 0.1).tolist() == [True] * 6  # floor(0.6) = 0
    assert int((~keep_mask_drop_top(torch.arange(100.0), 0.29)).sum()) == 29
    assert keep_mask_drop_top(scores, 0.5).dtype == torch.bool
    for fraction in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            keep_mask_drop_top(scores, fraction)


def test_nll_per_pair_is_the_mean_token_nll_of_the_chosen_response():
    pc = torch.tensor([-12.0, -3.0, 0.0], dtype=torch.float64)
    tokens = torch.tensor([4, 2, 0])
    assert close(nll_per_pair(pc, tokens), [3.0, 1.5, 0.0])  # no tokens: 0, not 0/0


def test_pair_metrics():
    pc, pr, rc, rr = tensors()
    pc.requires_grad_(True)
    metrics = pair_metrics(pc, pr, rc, rr, beta=0.5)
    assert all(not value.requires_grad and value.shape == (len(PAIRS),) for value in metrics.values())
    assert metrics["rewards/accuracy"].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert close(metrics["rewards/margin"], [0.5 * gap(*p) for p in PAIRS])
    assert close(metrics["rewards/chosen"], [0.5 * (p[0] - p[2]) for p in PAIRS])
    assert close(metrics["rewards/rejected"], [0.5 * (p[1] - p[3]) for p in PAIRS])
    assert close(metrics["logratio/chosen"], [p[0] - p[2] for p in PAIRS])
    assert close(metrics["logratio/rejected"], [p[1] - p[3] for p in PAIRS])
    assert close(metrics["logps/chosen"], [p[0] for p in PAIRS])
    assert close(metrics["logps/rejected"], [p[1] for p in PAIRS])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_float32_in_float32_out(loss_type):
    losses = pair_losses(*tensors(dtype=torch.float32), loss_type=loss_type, beta=0.1)
    assert losses.dtype == torch.float32 and losses.shape == (len(PAIRS),)
    expected = pair_losses(*tensors(), loss_type=loss_type, beta=0.1)
    assert torch.allclose(losses.double(), expected, rtol=1e-5, atol=1e-5)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="sigmoid, ipo, cal_dpo, dr_dpo, sigmoid_centred"):
        pair_losses(*tensors(), loss_type="hinge", beta=0.1)
    for beta in (0.0, -0.1):
        with pytest.raises(ValueError, match="beta"):
            pair_losses(*tensors(), loss_type="sigmoid", beta=beta)
    for loss_type in ("ipo", "cal_dpo"):
        with pytest.raises(ValueError, match="label_smoothing"):
            pair_losses(*tensors(), loss_type=loss_type, beta=0.1, label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        pair_losses(*tensors(), loss_type="sigmoid", beta=0.1, label_smoothing=0.7)
    pc, pr, rc, rr = tensors()
    with pytest.raises(ValueError, match="equal length"):
        pair_losses(pc, pr[:-1], rc, rr, loss_type="sigmoid", beta=0.1)
