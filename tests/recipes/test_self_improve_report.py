"""The self-improvement demo's verdicts on seed 004's targets (afm_trainer.demo.self_improve)."""

from afm_trainer.demo.self_improve import target_lines, write_report
from afm_trainer.eval.self_improve import score


def result(answers: list[str], items: list[dict]) -> dict:
    return score(items, [f"<answer>{a}</answer>" for a in answers])


def results_with(items, a, b_unbalanced, b, c, c_no_draft, c_shuffled, majority, draft):
    def phase(answers):
        same = result(answers, items)
        return {"draft": same, "question": same, "shuffled draft": same, "draft attribution": attribution}

    attribution = {"items": 4, "mean_share": 0.25, "draft_share_of_characters": 0.2, "max_convergence_delta": 0.01}
    return {
        "items": len(items),
        "phases": {
            "phaseA_direct": {"question": result(a, items)},
            "phaseB_cot_unbalanced": phase(b_unbalanced),
            "phaseB_cot": phase(b),
            "phaseC_dpo": {
                **phase(c),
                "question": result(c_no_draft, items),
                "shuffled draft": result(c_shuffled, items),
            },
        },
        "baselines": {
            "majority answer": result(majority, items),
            "the draft's answer": result(draft, items),
            "nearest training example": result(majority, items),
        },
        "track_b_labels": {"before filtering": {}, "after filtering": {}, "after balancing": {}},
        "teacher_right": 0.7,
        "clarifier_useful": {it["id"]: i % 2 == 0 for i, it in enumerate(items)},
    }


def test_targets_are_judged_on_paired_gains_and_noise_is_named(tmp_path):
    items = [{"id": f"q{i}", "answer": "yes" if i % 2 else "no"} for i in range(40)]
    right = [it["answer"] for it in items]
    half = [it["answer"] if i < 20 else ("no" if it["answer"] == "yes" else "yes") for i, it in enumerate(items)]
    one_more = [it["answer"] if i < 21 else ("no" if it["answer"] == "yes" else "yes") for i, it in enumerate(items)]
    lines = "\n".join(
        target_lines(
            results_with(
                items,
                a=one_more,
                b_unbalanced=["no"] * 40,
                b=right,
                c=right,
                c_no_draft=half,
                c_shuffled=one_more,
                majority=half,
                draft=right,
            )
        )
    )
    # phase A is one item above the majority: not "above" it, within noise
    assert "phase A above the majority answer: 52.5% vs 50.0%, +2.5%" in lines
    assert "within two standard errors of no change): NOT met" in lines.split("\n")[2]
    assert "phase C at least +10 points over phase A: 100.0% vs 52.5%, +47.5%" in lines and ": met" in lines
    assert "unbalanced data 0 / 40 / 0" in lines  # the collapse to one answer shows
    assert "the no-draft ablation above the shuffled-draft one: 50.0% vs 52.5%, -2.5%" in lines
    copy_line = next(line for line in lines.split("\n") if "copying the draft's answer" in line)
    assert copy_line.endswith("NOT met")  # equal to copying the draft is not better than it
    write_report(
        str(tmp_path),
        results_with(items, one_more, ["no"] * 40, right, right, half, one_more, half, right),
        {"drafts": {"error_rate": 0.3}},
    )
    assert (tmp_path / "report.md").exists() and (tmp_path / "self_improve.png").exists()
