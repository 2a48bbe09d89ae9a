"""The multi-agent controller and the one-call AFM on held-out tasks, with scripted models:
what is called with what, what is counted, and how the chain's program is scored."""

from afm_trainer.eval.agent_chain import CODER, PLANNER, REVIEWER, run_afm, run_mas, split_turns, summary
from afm_trainer.world.algorithmic import make_task, solution_source

TASK = make_task(3, "reverse_string", 2, 0)
ITEM = {
    "id": TASK.task_id,
    "prompt": TASK.prompt,
    "answer": TASK.answer,
    "type": TASK.type,
    "difficulty": TASK.difficulty,
    "x": TASK.x,
}
RIGHT = solution_source("reverse_string")
WRONG = "def solve(x):\n    return x\n"


class ScriptedAgent:
    """Answers each call with the next of ``replies``; records the conversations it got."""

    def __init__(self, *replies):
        self.replies, self.seen = list(replies), []

    def call(self, conversations, batch_size, temperature=0.0, seed=0):
        self.seen += conversations
        return [(self.replies.pop(0), 10 * len(c), 5) for c in conversations]


def test_split_turns_follows_the_role_tokens():
    text = f"junk{PLANNER}Plan.\n{CODER}def solve(x): pass\n{REVIEWER}Approved."
    assert split_turns(text) == [(PLANNER, "Plan."), (CODER, "def solve(x): pass"), (REVIEWER, "Approved.")]


def test_a_rejection_sends_the_coder_back_with_the_verdict_and_the_rewrite_is_scored():
    agents = {
        PLANNER: ScriptedAgent(f"{PLANNER}Plan: reverse it."),
        CODER: ScriptedAgent(f"{CODER}{WRONG}", f"{CODER}{RIGHT}"),
        REVIEWER: ScriptedAgent(f"{REVIEWER}Wrong. Rejected.", f"{REVIEWER}Good. Approved."),
    }
    (row,) = run_mas(agents, [ITEM], max_rounds=3)
    assert row["correct"] and row["programs"] == 2
    assert row["calls"] == 5 and row["generated_tokens"] == 25
    # each call sees the conversation so far: the second Coder call sees the rejection
    retry = agents[CODER].seen[1]
    assert [m["content"] for m in retry[1:]] == [
        f"{PLANNER}Plan: reverse it.",
        f"{CODER}{WRONG}",
        f"{REVIEWER}Wrong. Rejected.",
    ]
    assert row["prompt_tokens"] == 10 * (1 + 2 + 3 + 4 + 5)


def test_the_controller_stops_at_max_rounds_and_scores_the_last_program():
    agents = {
        PLANNER: ScriptedAgent(f"{PLANNER}Plan."),
        CODER: ScriptedAgent(f"{CODER}{RIGHT}", f"{CODER}{WRONG}"),
        REVIEWER: ScriptedAgent(f"{REVIEWER}Rejected.", f"{REVIEWER}Rejected."),
    }
    (row,) = run_mas(agents, [ITEM], max_rounds=2)
    assert row["calls"] == 5 and row["programs"] == 2
    assert not row["correct"] and row["predicted"] == str(TASK.x)  # the last program: identity


def test_the_afm_is_one_call_and_its_last_program_counts():
    afm = ScriptedAgent(f"{PLANNER}Plan.\n{CODER}{WRONG}\n{REVIEWER}Rejected.\n{CODER}{RIGHT}\n{REVIEWER}Approved.")
    (row,) = run_afm(afm, [ITEM])
    assert row["calls"] == 1 and row["programs"] == 2 and row["correct"]
    assert afm.seen == [[{"role": "user", "content": TASK.prompt}]]
    broken = ScriptedAgent(f"{PLANNER}Plan.\n{CODER}def solve(x):\n    return x[::-1] +\n{REVIEWER}Approved.")
    (row,) = run_afm(broken, [ITEM])
    assert not row["correct"] and row["predicted"] is None  # a syntax error answers nothing
    (row,) = run_afm(ScriptedAgent("no roles at all"), [ITEM])
    assert not row["correct"] and row["programs"] == 0


def test_summary_counts_per_task():
    rows = [
        {"correct": True, "calls": 3, "prompt_tokens": 30, "generated_tokens": 9, "programs": 1},
        {"correct": False, "calls": 5, "prompt_tokens": 50, "generated_tokens": 11, "programs": 2},
    ]
    out = summary(rows, seconds=4.0, latency=[1.0, 2.0, 3.0])
    assert out["accuracy"] == 0.5 and out["calls_per_task"] == 4 and out["prompt_tokens_per_task"] == 40
    assert out["rewrites_per_task"] == 0.5 and out["tasks_per_second"] == 0.5
    assert out["latency_median_s"] == 2.0 and out["latency_p95_s"] == 3.0
