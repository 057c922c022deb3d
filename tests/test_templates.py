"""Prompt templates byte for byte, BOS handling, stop tokens and the prefix."""

from __future__ import annotations

import warnings

import pytest

from rlsteer.models import smollm2_tokenizer
from rlsteer.templates import QWEN_MATH_SYSTEM, TemplateError, build_prompt, render

PROBLEM = "What is $1+1$?"
QWEN_MATH = ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
             "<|im_start|>user\nWhat is $1+1$?<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


def test_qwen_math_is_byte_for_byte_the_reference_string(tok, tiny):
    assert QWEN_MATH_SYSTEM == "Please reason step by step, and put your final answer within \\boxed{}."
    p = build_prompt(tok, PROBLEM)
    assert p.text == QWEN_MATH
    assert p.ids == tuple(tok.encode(QWEN_MATH, add_special_tokens=False))
    assert p.ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # the template's own start, no extra BOS
    _, tiny_tok = tiny("qwen2")  # a tiny model with a ChatML template gives the same bytes
    assert build_prompt(tiny_tok, PROBLEM).text == QWEN_MATH


def test_stop_token_is_the_end_of_turn(tok):
    p = build_prompt(tok, PROBLEM)
    assert p.stop_tokens == ("<|im_end|>",)
    assert p.stop_ids == (tok.convert_tokens_to_ids("<|im_end|>"),)


def test_r1_is_the_raw_conversation_string(tok):
    p = build_prompt(tok, PROBLEM, template="r1")
    assert p.text.startswith("A conversation between User and Assistant. The User asks a question")
    assert p.text.endswith("<answer> answer here </answer>.\nUser: What is $1+1$?\nAssistant: <think>")
    assert "<|im_start|>" not in p.text  # the chat template is bypassed


def test_chat_and_plain(tok):
    chat = build_prompt(tok, PROBLEM, template="chat")
    assert chat.text.endswith("<|im_start|>user\nWhat is $1+1$?<|im_end|>\n<|im_start|>assistant\n")
    assert QWEN_MATH_SYSTEM not in chat.text
    assert build_prompt(tok, PROBLEM, template="plain").text == PROBLEM
    with pytest.raises(TemplateError, match="unknown template 'qwen'"):
        build_prompt(tok, PROBLEM, template="qwen")


def test_prefix_lands_right_after_the_generation_prompt(tok):
    p = build_prompt(tok, PROBLEM, prefix="To")
    base = build_prompt(tok, PROBLEM)
    assert p.ids == base.ids + (tok.encode("To", add_special_tokens=False)[0],)
    assert p.text == QWEN_MATH + "To"
    assert tok.decode(p.ids[-2:]) == "\nTo"  # "\n" of the assistant header, then the prefix token
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_prompt(tok, PROBLEM, prefix="Step")  # one token: no warning


def test_multi_token_prefix_warns_and_empty_prefix_fails(tok):
    with pytest.warns(UserWarning, match="is 3 tokens"):
        build_prompt(tok, PROBLEM, prefix="Let us think")
    with pytest.raises(TemplateError, match="tokenises to nothing"):
        build_prompt(tok, PROBLEM, prefix="")


class _NoChatTok:
    """A stand-in for a base-model tokenizer without a chat template that adds BOS (Llama-3 style)."""

    chat_template = None
    bos_token, bos_token_id, eos_token = "<s>", 1, "</s>"

    def __init__(self, real):
        self.real = real

    def encode(self, text, add_special_tokens=False):
        return self.real.encode(text, add_special_tokens=False)

    def __call__(self, text):
        class Out:
            input_ids = [1, *self.real.encode(text, add_special_tokens=False)]
        return Out()

    def convert_tokens_to_ids(self, token):
        return {"</s>": 2, "<s>": 1}.get(token, 0)

    def convert_ids_to_tokens(self, index):
        return {2: "</s>", 1: "<s>"}.get(index, "<unk>")


def test_raw_templates_get_bos_when_the_tokenizer_adds_one(tok):
    fake = _NoChatTok(tok)
    p = build_prompt(fake, PROBLEM, template="r1")
    assert p.ids[0] == 1 and p.text.startswith("<s>A conversation")
    assert p.stop_tokens == ("</s>",)
    fallback, from_chat = render(fake, PROBLEM, "qwen-math")
    assert not from_chat and fallback.endswith("\n\nUser: What is $1+1$? Assistant:")
    assert build_prompt(tok, PROBLEM, template="r1").ids[0] != tok.bos_token_id  # SmolLM2 adds no BOS
