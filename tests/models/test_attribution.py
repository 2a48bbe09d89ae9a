import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from afm_trainer.eval.attribution import _response_log_prob, span_attribution_share

QUESTION = "Is 12 + 30 = 42?"
DRAFT = "12 + 30 = 42, so yes."
CONTENT = QUESTION + "\n\nStudent draft:\n" + DRAFT
DRAFT_SPAN = (len(CONTENT) - len(DRAFT), len(CONTENT))
MESSAGES = [{"role": "user", "content": CONTENT}]
RESPONSE = "<think>12 + 30 = 42</think><answer>yes</answer>"


@pytest.fixture(scope="module")
def tokenizer(nano_model):
    return AutoTokenizer.from_pretrained(nano_model)


@pytest.fixture(scope="module")
def model(nano_model):
    return AutoModelForCausalLM.from_pretrained(nano_model, dtype=torch.float32)


def share(model, tokenizer, span, messages=MESSAGES, response=RESPONSE, **kwargs):
    return span_attribution_share(model, tokenizer, messages, response, span, **kwargs)[0]


def test_shares_of_a_partition_of_the_content_sum_to_one(model, tokenizer):
    draft_share = share(model, tokenizer, DRAFT_SPAN)
    rest_share = share(model, tokenizer, (0, DRAFT_SPAN[0]))
    assert 0 < draft_share < 1
    assert draft_share + rest_share == pytest.approx(1.0, abs=1e-6)
    # A cut inside a token ("Stu|dent") still splits the tokens into two disjoint sets.
    cut = CONTENT.index("Student") + 3
    assert share(model, tokenizer, (0, cut)) + share(model, tokenizer, (cut, len(CONTENT))) == pytest.approx(
        1.0, abs=1e-6
    )


def test_whole_content_gives_one_and_empty_span_gives_zero(model, tokenizer):
    assert share(model, tokenizer, (0, len(CONTENT))) == pytest.approx(1.0)
    assert share(model, tokenizer, (5, 5)) == 0.0
    assert share(model, tokenizer, (len(CONTENT), len(CONTENT))) == 0.0


def test_attributions_add_up_to_the_change_in_log_prob(model, tokenizer):
    # Integrated gradients' completeness: sum of attributions = f(x) - f(baseline).
    # A small delta means the embedding hook, the target and the baseline are wired consistently.
    for response in (RESPONSE, "<answer>no</answer>"):
        _, delta = span_attribution_share(model, tokenizer, MESSAGES, response, DRAFT_SPAN, n_steps=32)
        assert delta < 0.05
    _, coarse = span_attribution_share(
        model, tokenizer, MESSAGES, RESPONSE, DRAFT_SPAN, n_steps=4, internal_batch_size=2
    )
    assert coarse > delta  # fewer steps, worse approximation: the delta measures something


def test_target_is_the_log_prob_of_the_response_tokens(model, tokenizer):
    # Independent of the attribution code: -HF's mean loss on the response tokens x their count.
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    response_ids = tokenizer.encode(RESPONSE, add_special_tokens=False)
    input_ids = torch.tensor([prompt_ids + response_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + response_ids])
    with torch.no_grad():
        loss = model(input_ids=input_ids, labels=labels).loss
        f = _response_log_prob(model, input_ids, len(prompt_ids))
    assert f.item() == pytest.approx(-loss.item() * len(response_ids), rel=1e-5)


def test_a_span_outside_the_content_raises(model, tokenizer):
    for span in [(-1, 3), (0, len(CONTENT) + 1), (6, 2)]:
        with pytest.raises(ValueError, match="outside the user content"):
            share(model, tokenizer, span)


def test_content_the_template_rewrites_raises(model, nano_model):
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    messages = [{"role": "user", "content": CONTENT + "  "}]
    with pytest.raises(ValueError, match="verbatim"):
        share(model, tokenizer, (0, 3), messages=messages)


def test_repeated_text_splits_its_attribution(model, tokenizer):
    copy = "12 + 30 = 42. "
    content = "Check: " + copy + copy
    messages = [{"role": "user", "content": content}]
    first = (len("Check: "), len("Check: ") + len(copy))
    second = (first[1], len(content))
    shares = [share(model, tokenizer, s, messages=messages) for s in [(0, first[0]), first, second]]
    assert all(0 < s < 1 and not math.isnan(s) for s in shares)
    assert sum(shares) == pytest.approx(1.0, abs=1e-6)


def test_pad_tokens_in_the_content_get_no_attribution(model, tokenizer):
    # The baseline puts pad ids on the content tokens: where the content already is the
    # pad token, input and baseline agree, so its attribution must be exactly zero.
    content = QUESTION + tokenizer.pad_token + DRAFT
    pad_span = (len(QUESTION), len(QUESTION) + len(tokenizer.pad_token))
    messages = [{"role": "user", "content": content}]
    assert share(model, tokenizer, pad_span, messages=messages) == 0.0
    assert share(model, tokenizer, (0, pad_span[0]), messages=messages) > 0


def test_a_model_that_cannot_see_the_prompt_gives_no_attribution(nano_model, tokenizer):
    # With every attention output zeroed, each position sees only its own token, so f does not
    # depend on the user content: f(x) = f(baseline) (nothing outside the content was replaced)
    # and the share is undefined.
    blind = AutoModelForCausalLM.from_pretrained(nano_model, dtype=torch.float32)
    with torch.no_grad():
        for layer in blind.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    draft_share, delta = span_attribution_share(blind, tokenizer, MESSAGES, RESPONSE, DRAFT_SPAN)
    assert math.isnan(draft_share) and math.isnan(delta)
