"""Seed 004's ablation prompts and scoring (afm_trainer.eval.self_improve)."""

from afm_trainer.eval.self_improve import (
    condition_prompts,
    derangement,
    draft_answer_baseline,
    majority_baseline,
    predicted_label,
    score,
)
from afm_trainer.traces.formats import teacher_prompt

ITEMS = [
    {
        "id": f"q{i}",
        "question": f"Question {i}?",
        "answer": "yes" if i % 2 else "no",
        "student_draft": f"Answer: {'Yes' if i < 3 else 'No'} - reason {i}\nQuestions: Where was P{i} born?",
    }
    for i in range(7)
]


def test_the_three_prompts_are_built_as_trained():
    question = condition_prompts(ITEMS, "question")
    draft = condition_prompts(ITEMS, "draft")
    shuffled = condition_prompts(ITEMS, "shuffled draft", seed=1)
    for i, item in enumerate(ITEMS):
        assert question[i] == [{"role": "user", "content": item["question"]}]
        assert draft[i] == [{"role": "user", "content": teacher_prompt(item["question"], item["student_draft"])}]
        content = shuffled[i][0]["content"]
        assert content.startswith(item["question"] + "\n\nStudent draft:\n")
        assert item["student_draft"] not in content  # never its own draft
    used = [p[0]["content"].split("Student draft:\n")[1] for p in shuffled]
    assert sorted(used) == sorted(it["student_draft"] for it in ITEMS)  # every draft once
    assert shuffled == condition_prompts(ITEMS, "shuffled draft", seed=1)  # deterministic


def test_derangement_moves_every_index():
    for n in range(2, 30):
        for seed in range(3):
            order = derangement(n, seed)
            assert sorted(order) == list(range(n)) and all(order[i] != i for i in range(n))


def test_scoring_counts_labels_and_reads_only_the_answer_tag():
    assert predicted_label("<think>so yes</think><answer> Yes </answer>") == "yes"
    assert predicted_label("yes") == "none" and predicted_label("<answer>maybe</answer>") == "none"
    result = score(ITEMS[:3], ["<answer>no</answer>", "<answer>no</answer>", "nothing"])
    assert result["predicted"] == {"yes": 0, "no": 2, "none": 1}
    assert result["correct_by_item"] == {"q0": 1.0, "q1": 0.0, "q2": 0.0}
    assert abs(result["accuracy"] - 1 / 3) < 1e-9


def test_baselines():
    copy = draft_answer_baseline(ITEMS)  # drafts say yes for q0-q2, no after
    assert copy["correct_by_item"] == {"q0": 0.0, "q1": 1.0, "q2": 0.0, "q3": 0.0, "q4": 1.0, "q5": 0.0, "q6": 1.0}
    assert majority_baseline(["yes", "no", "no"], ITEMS)["predicted"]["no"] == 7
