"""The multi-agent controller and the one-call AFM on held-out tasks, with scripted models:
what is called with what, what is counted, and how the chain's program is scored."""

import torch

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


# --- several items at once ---


def as_item(task):
    return {
        k: getattr(task, k if k != "id" else "task_id") for k in ("id", "prompt", "answer", "type", "difficulty", "x")
    }


# Three tasks of different types; each gets its own script: A is approved at once, B is
# rejected then approved, C is rejected twice (max_rounds=2) and its last program is wrong.
TASKS = {
    "A": make_task(3, "reverse_string", 2, 0),
    "B": make_task(3, "rpn", 3, 0),
    "C": make_task(3, "fizzbuzz", 2, 0),
}
NOPE = "def solve(x):\n    return 'nope'\n"
SCRIPTS = {
    "A": [f"{PLANNER}Plan A.", f"{CODER}{solution_source('reverse_string')}", f"{REVIEWER}Fine. Approved."],
    "B": [
        f"{PLANNER}Plan B, evaluate the stack.",
        f"{CODER}{NOPE}",
        f"{REVIEWER}Wrong output. Rejected.",
        f"{CODER}{solution_source('rpn')}",
        f"{REVIEWER}Approved.",
    ],
    "C": [
        f"{PLANNER}C: divisibility.",
        f"{CODER}{solution_source('fizzbuzz')}",
        f"{REVIEWER}I doubt it. Rejected.",
        f"{CODER}{NOPE}",
        f"{REVIEWER}Still no. Rejected.",
    ],
}
ROLE_OF_CALL = [PLANNER, CODER, REVIEWER, CODER, REVIEWER]


class PerItemAgent:
    """Answers each conversation by its task's script (the task found by its prompt, the
    step by how many turns it holds); counts characters as "tokens": the conversation's
    for the prompt, the reply's for the generation."""

    def __init__(self, role):
        self.role, self.batches = role, []

    def call(self, conversations, batch_size, temperature=0.0, seed=0):
        self.batches.append([c[0]["content"] for c in conversations])
        replies = []
        for c in conversations:
            (key,) = [k for k, t in TASKS.items() if t.prompt == c[0]["content"]]
            assert ROLE_OF_CALL[len(c) - 1] == self.role
            reply = SCRIPTS[key][len(c) - 1]
            replies.append((reply, sum(len(m["content"]) for m in c), len(reply)))
        return replies


def test_several_items_each_get_their_own_turns_calls_and_token_counts():
    items = [as_item(TASKS[k]) for k in "ABC"]
    agents = {role: PerItemAgent(role) for role in (PLANNER, CODER, REVIEWER)}
    rows = run_mas(agents, items, max_rounds=2)
    assert [r["id"] for r in rows] == [TASKS[k].task_id for k in "ABC"]
    for key, row in zip("ABC", rows):
        script, prompt = SCRIPTS[key], TASKS[key].prompt
        # by hand: call k sees the prompt and the script's first k turns
        prompt_chars = sum(len(prompt) + sum(len(t) for t in script[:k]) for k in range(len(script)))
        assert (row["calls"], row["prompt_tokens"], row["generated_tokens"]) == (
            len(script),
            prompt_chars,
            sum(len(t) for t in script),
        ), key
        assert row["chain"] == "\n".join(script) and row["gold"] == TASKS[key].answer
    assert [(r["correct"], r["programs"], r["predicted"]) for r in rows] == [
        (True, 1, "frma"),  # x is "amrf"; the prompt spaces its letters
        (True, 2, "-24"),
        (False, 2, "nope"),
    ]
    # the second round asks only the rejected items, in order
    assert agents[CODER].batches == [[TASKS[k].prompt for k in "ABC"], [TASKS[k].prompt for k in "BC"]]


class EveryFourthEnds(torch.nn.Module):
    """An LM head that writes ``word`` and ends the turn (``eos``) on every 4th position
    of the sequence: token n (0-based, prompt included) is ``eos`` when (n + 1) % 4 == 0.
    It reads the positions from the model's call (``watch``)."""

    def __init__(self, vocab, word, eos):
        super().__init__()
        self.vocab, self.word, self.eos, self.positions = vocab, word, eos, None

    def watch(self, model):
        model.register_forward_pre_hook(
            lambda _, args, kwargs: setattr(self, "positions", kwargs["position_ids"]), with_kwargs=True
        )

    def forward(self, hidden):
        logits = torch.zeros(*hidden.shape[:-1], self.vocab, dtype=hidden.dtype)
        ends = (self.positions[:, -1] + 2) % 4 == 0  # the next token's position n is the last one's + 1
        logits[ends, ..., self.eos] = 1.0
        logits[~ends, ..., self.word] = 1.0
        return logits


def test_token_counts_of_a_real_model_and_tokenizer_over_a_padded_batch(nano_model):
    """Each item's prompt tokens are its own conversations' token counts (batches of 2
    items of different lengths: left padding is not counted), its generated tokens what
    each of its turns wrote, end-of-turn token included (a model made to write one word
    until a 4th position or its turn's limit, so the turns' lengths differ by item)."""
    from transformers import AutoTokenizer

    from afm_trainer.eval.agent_chain import Agent
    from afm_trainer.eval.lm import load_model

    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    (word,) = tokenizer.encode(" a", add_special_tokens=False)
    model = load_model(nano_model)
    model.lm_head = EveryFourthEnds(model.config.vocab_size, word, tokenizer.eos_token_id)
    model.lm_head.watch(model)
    limits = {PLANNER: 2, CODER: 5, REVIEWER: 3}  # never "Approved.": two rounds for all
    agents = {role: Agent(model, tokenizer, n) for role, n in limits.items()}
    tasks = [make_task(3, "reverse_string", 2, 0), make_task(5, "rpn", 4, 1), make_task(3, "fizzbuzz", 2, 0)]
    rows = run_mas(agents, [as_item(t) for t in tasks], max_rounds=2, batch_size=2)

    def count(conversation):
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    expected = []
    for task in tasks:
        conversation, prompt_tokens, generated = [{"role": "user", "content": task.prompt}], 0, 0
        for role in ROLE_OF_CALL:
            length = count(conversation)
            prompt_tokens += length
            to_end = 4 - length % 4  # tokens up to and including the end-of-turn token
            reply = " a" * min(to_end - 1, limits[role])
            assert len(tokenizer.encode(reply, add_special_tokens=False)) == min(to_end - 1, limits[role])
            generated += min(to_end, limits[role])
            conversation.append({"role": "assistant", "content": reply})
        expected.append((task.task_id, 5, prompt_tokens, generated))
    assert [(r["id"], r["calls"], r["prompt_tokens"], r["generated_tokens"]) for r in rows] == expected
    assert len({e[2] for e in expected}) == len({e[3] for e in expected}) == 3  # every item's differ
