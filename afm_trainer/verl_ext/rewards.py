"""Rule rewards for verl's RL trainer: each row's suite (found by its ``data_source``,
afm_trainer.suites) says what to score in a response and how much credit it earns.

    reward.custom_reward_function.path=pkg://afm_trainer.verl_ext.rewards
    reward.custom_reward_function.name=compute_score

(as the GRPO recipe's config/grpo.yaml does; verl also loads this file by its path, as a
module outside any package, so it imports only absolute ``afm_trainer`` modules, and
nothing heavy: no torch).

Every row gets the same keys, {"score", "correct", "format", "reason"}, since verl
gathers the extra keys of a batch into per-key columns (``reason``, text, is kept in
verl's generation dumps and left out of its metrics).

    format  = 1 if the suite can extract what it scores (a well-formed response), else 0
    credit  = the suite's credit for it, 0..1 (qa: exact match, else half its token F1,
              the best over the gold answers; algorithmic: the verifier; code: the
              fraction of tests passed)
    score   = format * (FORMAT_WEIGHT + CORRECT_WEIGHT * credit)        (0 .. 1.1)
    correct = 1 if credit == 1

A row's ground truth reaches the suite as text (``str`` of it), except an object: the
rows of another project that a suite scores as they are carry one (Search-R1's nq,
hotpotqa... rows: {"target": [aliases]}, which the qa suite reads, best alias wins).

Correctness counts only in a well-formed response, so malformed output scores 0: an
answer the held-out evaluation cannot extract must not be reinforced. Only the policy's
own text is read (tool output is removed first, afm_trainer.suites.responses). Nothing in
a model's output makes compute_score raise: an answer a scorer fails on scores 0 and
``reason`` says why. A broken row (``afm_trainer.suites.base.RowError``) or an unknown
data_source (neither a suite's nor a foreign source one scores) raises, loudly, since it
is a bug in the data, not in the model.
"""

from __future__ import annotations

from afm_trainer.suites import suite_for_source
from afm_trainer.suites.base import RowError

CORRECT_WEIGHT = 1.0  # the signal RL is for
FORMAT_WEIGHT = 0.1  # small: enough to learn the tags early, never worth more than being right


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's custom reward function (its signature); returns {"score", "correct", "format", "reason"}."""
    suite = suite_for_source(data_source)
    if isinstance(solution_str, bytes):
        solution_str = solution_str.decode("utf-8", "replace")
    try:
        answer = suite.extract(solution_str) if isinstance(solution_str, str) else None
        if answer is None:
            return {"score": 0.0, "correct": 0, "format": 0, "reason": "no well-formed answer"}
        truth = ground_truth if isinstance(ground_truth, dict) else str(ground_truth)
        credit = float(suite.credit(answer, truth, extra_info or {}))
    except RowError:
        raise
    except Exception as exc:  # the model's output broke a scorer: no credit, and why
        reason = f"the answer could not be scored: {type(exc).__name__}: {exc}"
        return {"score": 0.0, "correct": 0, "format": 0, "reason": reason[:300]}
    if not 0.0 <= credit <= 1.0:  # NaN included
        return {"score": 0.0, "correct": 0, "format": 0, "reason": f"the scorer gave credit {credit}"}
    return {"score": FORMAT_WEIGHT + CORRECT_WEIGHT * credit, "correct": int(credit == 1.0), "format": 1, "reason": ""}
