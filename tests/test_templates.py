"""Prompt templates byte for byte, BOS handling, stop tokens and the prefix."""

from __future__ import annotations

import copy
import warnings

import pytest
from tokenizers import processors

from rlsteer.models import smollm2_tokenizer
from rlsteer.templates import QWEN_MATH_SYSTEM, TemplateError, build_prompt, render
from tests.chat_templates import LLAMA31_INSTRUCT, QWEN25_MATH

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


# ------------------------------------------------------------------ the paper's models' tokenizers, offline
#
# SmolLM2's tokenizer dressed as Qwen2.5-Math-7B's and Llama-3.1-8B(-Instruct)'s: their published chat
# templates (tests/chat_templates.py), special tokens, BOS/EOS and BOS-adding behaviour. The expected strings
# are the ones the authors' code produces (docs/semantics.md#templates).

R1_TEXT = ("A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The "
           "Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
           "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> "
           "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
           "User: What is $1+1$?\nAssistant: <think>")
LLAMA_QWEN_MATH = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                   "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                   "Please reason step by step, and put your final answer within \\boxed{}.<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nWhat is $1+1$?<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")
LLAMA_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|eom_id|>", "<|python_tag|>"]


@pytest.fixture(scope="module")
def qwen_math_tok(tok):
    """Qwen2.5-Math-7B: ChatML template with its default system prompt, no BOS, EOS <|endoftext|>."""
    q = copy.deepcopy(tok)
    q.chat_template = QWEN25_MATH
    q.bos_token = None
    q.eos_token = "<|endoftext|>"
    return q


def llama31(tok, *, instruct: bool):
    """Llama-3.1-8B(-Instruct): header tokens, BOS added to plain text; the Instruct tokenizer has the chat
    template and EOS <|eot_id|>, the base one no template and EOS <|end_of_text|>."""
    t = copy.deepcopy(tok)
    t.add_special_tokens({"additional_special_tokens": LLAMA_SPECIAL})
    t.bos_token = "<|begin_of_text|>"
    t.eos_token = "<|eot_id|>" if instruct else "<|end_of_text|>"
    bos = t.convert_tokens_to_ids("<|begin_of_text|>")
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    t.chat_template = LLAMA31_INSTRUCT if instruct else None
    assert t("a").input_ids[0] == bos
    return t


def test_qwen25_math_tokenizer_gives_the_reference_prompt_and_stops(qwen_math_tok):
    t = qwen_math_tok
    p = build_prompt(t, PROBLEM)
    assert p.text == QWEN_MATH
    assert p.ids == tuple(t.encode(QWEN_MATH, add_special_tokens=False))  # no BOS
    # <|im_end|> is the authors' stop token; vLLM stops on the model's EOS as well
    assert p.stop_tokens == ("<|im_end|>", "<|endoftext|>")
    assert p.stop_ids == (t.convert_tokens_to_ids("<|im_end|>"), t.convert_tokens_to_ids("<|endoftext|>"))
    assert build_prompt(t, PROBLEM, template="chat").text == QWEN_MATH  # the template's default system prompt
    assert build_prompt(t, PROBLEM, prefix="To").text == QWEN_MATH + "To"


def test_llama31_instruct_gives_the_reference_prompt_with_one_bos(tok):
    t = llama31(tok, instruct=True)
    bos = t.convert_tokens_to_ids("<|begin_of_text|>")
    p = build_prompt(t, PROBLEM)
    assert p.text == LLAMA_QWEN_MATH
    assert p.ids == tuple(t.encode(LLAMA_QWEN_MATH, add_special_tokens=False))
    assert p.ids[0] == bos and p.ids.count(bos) == 1  # the template writes BOS; nothing adds a second one
    assert p.stop_tokens == ("<|eot_id|>",) and p.stop_ids == (t.convert_tokens_to_ids("<|eot_id|>"),)
    step = build_prompt(t, PROBLEM, prefix="Step")  # the paper's Llama prefix, right after the assistant header
    assert step.text == LLAMA_QWEN_MATH + "Step"
    assert step.ids == p.ids + tuple(t.encode("Step", add_special_tokens=False))


def test_r1_on_llama_is_bos_plus_the_raw_string(tok):
    """Base Llama-3.1-8B (no chat template): BOS + the R1 string, stop <|end_of_text|>. On the Instruct
    tokenizer (the transfer tables) the chat template is bypassed the same way, stopping on <|eot_id|>."""
    for instruct, stop in ((False, "<|end_of_text|>"), (True, "<|eot_id|>")):
        t = llama31(tok, instruct=instruct)
        bos = t.convert_tokens_to_ids("<|begin_of_text|>")
        p = build_prompt(t, PROBLEM, template="r1")
        assert p.text == "<|begin_of_text|>" + R1_TEXT
        assert p.ids == (bos, *t.encode(R1_TEXT, add_special_tokens=False))
        assert p.stop_tokens == (stop,)
    base = llama31(tok, instruct=False)
    fallback = build_prompt(base, PROBLEM)  # qwen-math without a chat template: the authors' plain string
    assert fallback.text == ("<|begin_of_text|>A conversation between User and Assistant. The user asks a question, "
                             "and the Assistant solves it. Please reason step by step, and put your final answer "
                             "within \\boxed{}.\n\nUser: What is $1+1$? Assistant:")
    assert fallback.ids.count(base.convert_tokens_to_ids("<|begin_of_text|>")) == 1
