"""Chat templates: a conversation → *pieces* ``[(text | EOS, is_answer)]``, the spans the collator tokenises (answer
pieces carry labels; `EOS` is the tokenizer's end-of-sequence id). Training and generation render with the same
function, so a prompt is tokenised identically in both.

Templates (`TEMPLATES`, chosen by ``data.template`` and stored in the export's processor): ``vicuna_v1``
(LLaVA's ``conv_vicuna_v1``, the RGPT recipe), ``plain`` (question/answer lines, no roles: the tiny preset) and
``chat_template`` (the tokenizer's own, e.g. SmolLM2's ChatML). A conversation's ``system`` turn replaces the
template's system text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from regionvlm.errors import ConfigError, DataError

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
#: a prompt's tags: ``<image>`` (the image tokens go here) and ``<regionK>`` (region K, 1-based)
TAG = re.compile(r"(<image>|<region\d+>)")
REGION_TAG = re.compile(r"<region(\d+)>")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

EOS = object()  # piece marker: the tokenizer's end-of-sequence id, labelled as part of the answer


# -- templates: conversation → pieces [(text | EOS, is_answer)] ---------------------------------------------
def _turns(conversations: Sequence[dict], where: str) -> tuple[str | None, list[tuple[str, str]]]:
    system, turns = None, []
    for j, t in enumerate(conversations):
        role = ROLES.get(t.get("from", t.get("role")))
        if role is None:
            raise DataError(f"{where}: conversations[{j}].from: unknown speaker {t.get('from')!r}")
        value = t.get("value", t.get("content"))
        if not isinstance(value, str):
            raise DataError(f"{where}: conversations[{j}].value: expected a string")
        if role == "system":
            system = value
        else:
            turns.append((role, value))
    return system, turns


def _prompt_turns(turns: list[tuple[str, str]], for_generation: bool) -> list[tuple[str, str]]:
    """For generation, the conversation up to (not including) the last assistant answer."""
    if for_generation and turns and turns[-1][0] == "assistant":
        return turns[:-1]
    return turns


def render_vicuna_v1(tokenizer, conversations, for_generation=False, where="sample"):
    """LLaVA's ``conv_vicuna_v1``: ``SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>``."""
    sys_override, turns = _turns(conversations, where)
    turns = _prompt_turns(turns, for_generation)
    pieces, text = [], (sys_override or VICUNA_SYSTEM) + " "
    for role, value in turns:
        if role == "user":
            text += f"USER: {value} "
        else:
            pieces.append((text + "ASSISTANT:", False))
            pieces += [(" " + value, True), (EOS, True)]
            text = ""
    if for_generation:
        pieces.append((text + "ASSISTANT:", False))
    elif text:
        pieces.append((text.rstrip(" "), False))
    return pieces


def render_plain(tokenizer, conversations, for_generation=False, where="sample"):
    """Minimal template for pretraining and the tiny preset: ``question\\nanswer</s>`` per turn, no roles."""
    _, turns = _turns(conversations, where)
    turns = _prompt_turns(turns, for_generation)
    pieces = []
    for role, value in turns:
        if role == "user":
            pieces.append((value + "\n", False))
        else:
            pieces += [(value, True), (EOS, True)]
    return pieces


def render_chat_template(tokenizer, conversations, for_generation=False, where="sample"):
    """The tokenizer's own chat template. Answer spans are found as the text between the rendering with a
    generation prompt after turn 2k and the rendering including answer k (both must be prefixes of the whole;
    templates where they are not are rejected)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("template: 'chat_template' chosen but the tokenizer has no chat template")
    system, turns = _turns(conversations, where)
    turns = _prompt_turns(turns, for_generation)
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": r, "content": v} for r, v in turns]

    def render(m, gen):
        return tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=gen)

    if for_generation:
        return [(render(msgs, True), False)]
    full, pieces, pos = render(msgs, False), [], 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt, answered = render(msgs[:i], True), render(msgs[: i + 1], False)
        start, end = len(prompt), len(answered)
        if not (full.startswith(prompt) and full.startswith(answered)) or start > end or start < pos:
            raise ConfigError("template: the tokenizer's chat template does not render conversations "
                              "incrementally; use vicuna_v1 or plain")
        pieces += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    if pos < len(full):
        pieces.append((full[pos:], False))
    return [p for p in pieces if p[0]]


#: template name → render(tokenizer, conversations, for_generation, where) → pieces
TEMPLATES: dict[str, Callable[..., list]] = {"vicuna_v1": render_vicuna_v1, "plain": render_plain,
                                             "chat_template": render_chat_template}


def check_template(name: Any, key: str = "template") -> str:
    if name not in TEMPLATES:
        from regionvlm.registry import _did_you_mean

        raise ConfigError(f"{key}: unknown chat template {name!r}{_did_you_mean(str(name), TEMPLATES)} "
                          f"known: {', '.join(TEMPLATES)}")
    return name


def render(template: str, tokenizer: Any, conversations: Sequence[dict], for_generation: bool = False,
           where: str = "sample") -> list:
    """The pieces of ``conversations`` in ``template`` (see the module docstring)."""
    return TEMPLATES[template](tokenizer, conversations, for_generation, where)
