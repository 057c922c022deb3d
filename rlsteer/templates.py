"""Prompt templates, stop tokens and the prefix option (docs/semantics.md#templates, #prefix, #transfer).

==========  =====================================================================================
template    prompt
==========  =====================================================================================
qwen-math   the model's chat template with the system prompt "Please reason step by step, and put your
            final answer within \\boxed{}." and the problem as the user message; without a chat template,
            the authors' plain-text fallback "… User: {problem} Assistant:"
r1          the raw R1 conversation string ending in "Assistant: <think>" (never the chat template)
chat        the model's chat template with the problem as the only user message
plain       the problem text as it is
==========  =====================================================================================

Texts rendered by a chat template are tokenised as they are (the template writes its own BOS); raw
strings get the BOS token exactly when the tokenizer adds one to plain text (Llama-3 yes, Qwen no). A
``prefix`` ("To", "Step", …) is tokenised on its own and its ids appended right after the generation
prompt, so it cannot merge with the template's last token. Stop tokens: the template's end-of-turn token
where the vocabulary has one, plus the tokenizer's EOS.

Example:
    >>> from rlsteer.models import smollm2_tokenizer
    >>> p = build_prompt(smollm2_tokenizer(), "What is 2 + 2?", prefix="To")
    >>> p.text.endswith("<|im_start|>assistant\\nTo"), p.stop_tokens
    (True, ('<|im_end|>',))
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from rlsteer.errors import RlsteerError

TEMPLATES = ("qwen-math", "r1", "chat", "plain")
DEFAULT_TEMPLATE = "qwen-math"  # the paper's template for Qwen2.5-Math, and every default in rlsteer

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_MATH_FALLBACK = ("A conversation between User and Assistant. The user asks a question, and the Assistant "
                      "solves it. Please reason step by step, and put your final answer within \\boxed{}."
                      "\n\nUser: {problem} Assistant:")
R1 = ("A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The "
      "Assistant first thinks about the reasoning process in the mind and then provides the User with the "
      "answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
      "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
      "here </answer>.\nUser: {problem}\nAssistant: <think>")

#: End-of-turn tokens of common chat formats, used as stop tokens when the vocabulary has them.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


class TemplateError(RlsteerError):
    pass


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt and how its completion ends.

    Attributes:
        text: the prompt as text (template + prefix), for records and display.
        ids: the token ids fed to the model.
        stop_ids / stop_tokens: the ids (and their strings) that end a completion.
        template, prefix: how it was built (recorded with every result).
    """

    text: str
    ids: tuple[int, ...]
    stop_ids: tuple[int, ...]
    stop_tokens: tuple[str, ...]
    template: str
    prefix: str | None = None


def check_template(template: str, key: str = "template") -> None:
    """Raise :class:`TemplateError` unless ``template`` names a template (``key`` is the option that gave it)."""
    if template not in TEMPLATES:
        raise TemplateError(f"{key}={template!r} is not a template; templates: {', '.join(TEMPLATES)}")


def render(tokenizer: Any, problem: str, template: str = DEFAULT_TEMPLATE) -> tuple[str, bool]:
    """The prompt text before any prefix, and whether it came from the chat template."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "qwen-math":
        if not has_chat:
            return QWEN_MATH_FALLBACK.replace("{problem}", problem), False
        messages = [{"role": "system", "content": QWEN_MATH_SYSTEM}, {"role": "user", "content": problem}]
        return _apply_chat(tokenizer, messages), True
    if template == "chat":
        if not has_chat:
            raise TemplateError("template 'chat' needs a tokenizer with a chat template; use qwen-math, r1 or plain")
        return _apply_chat(tokenizer, [{"role": "user", "content": problem}]), True
    if template == "r1":
        return R1.replace("{problem}", problem), False
    if template == "plain":
        return problem, False
    raise TemplateError(f"unknown template {template!r}; templates: {', '.join(TEMPLATES)}")


def build_prompt(tokenizer: Any, problem: str, template: str = DEFAULT_TEMPLATE, prefix: str | None = None) -> Prompt:
    """Render and tokenise ``problem`` with ``template``, appending ``prefix`` after the generation prompt."""
    text, from_chat = render(tokenizer, problem, template)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not from_chat and adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids.insert(0, tokenizer.bos_token_id)
        text = tokenizer.bos_token + text
    if prefix is not None:
        ids += prefix_ids(tokenizer, prefix)
        text += prefix
    stop_ids, stop_tokens = stop_tokens_for(tokenizer, template)
    return Prompt(text=text, ids=tuple(ids), stop_ids=stop_ids, stop_tokens=stop_tokens, template=template,
                  prefix=prefix)


def build_chat_prompt(tokenizer: Any, messages: list[dict[str, str]], prefix: str | None = None) -> Prompt:
    """A conversation (``[{"role": …, "content": …}, …]``) through the model's chat template, ready for the
    assistant's turn; stops as the ``chat`` template does. ``chat`` with one user message is this.

    Example:
        >>> from rlsteer.models import smollm2_tokenizer
        >>> tok = smollm2_tokenizer()
        >>> build_chat_prompt(tok, [{"role": "user", "content": "Hi"}]) == build_prompt(tok, "Hi", "chat")
        True
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("chat messages need a tokenizer with a chat template; send a plain prompt instead")
    text = _apply_chat(tokenizer, messages)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if prefix is not None:
        ids += prefix_ids(tokenizer, prefix)
        text += prefix
    stop_ids, stop_tokens = stop_tokens_for(tokenizer, "chat")
    return Prompt(text=text, ids=tuple(ids), stop_ids=stop_ids, stop_tokens=stop_tokens, template="chat",
                  prefix=prefix)


def prefix_ids(tokenizer: Any, prefix: str) -> list[int]:
    """Token ids of a prefix; an empty tokenisation is an error, more than one token a warning."""
    ids = list(tokenizer.encode(prefix, add_special_tokens=False))
    if not ids:
        raise TemplateError(f"prefix {prefix!r} tokenises to nothing; give text the tokenizer knows, such as "
                            "'To', or no prefix at all (leave it unset; `--prefix \"\"` in rlsteer eval)")
    if len(ids) > 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        warnings.warn(f"prefix {prefix!r} is {len(ids)} tokens {pieces}; the paper appends a single token "
                      "(e.g. 'To' for Qwen, 'Step' for Llama)", stacklevel=3)
    return ids


def stop_tokens_for(tokenizer: Any, template: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Stop token ids and strings: the chat format's end-of-turn token (chat templates) plus EOS."""
    tokens: list[str] = []
    if template in ("qwen-math", "chat") and getattr(tokenizer, "chat_template", None):
        tokens += [t for t in END_OF_TURN if _token_id(tokenizer, t) is not None and t in str(tokenizer.chat_template)]
    if tokenizer.eos_token is not None and tokenizer.eos_token not in tokens:
        tokens.append(tokenizer.eos_token)
    ids = [_token_id(tokenizer, t) for t in tokens]
    if not tokens or None in ids:
        raise TemplateError("the tokenizer has no EOS token and no known end-of-turn token to stop on")
    return tuple(i for i in ids if i is not None), tuple(tokens)


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of a single vocabulary token, or None when the vocabulary lacks it (O(1), unlike get_vocab)."""
    index = tokenizer.convert_tokens_to_ids(token)
    if index is None or tokenizer.convert_ids_to_tokens(index) != token:
        return None
    return int(index)


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front of plain text."""
    if tokenizer.bos_token_id is None:
        return False
    return bool(tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id])


def _apply_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text)
