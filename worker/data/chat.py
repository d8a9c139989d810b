"""Chat templates by name, and conversations -> token ids with the loss on the assistant turns only.

A messages row is rendered with the tokenizer's own chat template (`auto`) or one of the named Jinja
templates below, exactly as `tokenizer.apply_chat_template` renders for inference. The named ones
start with the bos token when the tokenizer has one: apply_chat_template adds no special tokens
itself, and most base models were pretrained with bos in front of every document.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import PreTrainedTokenizerBase

from worker.data.files import DatasetError, Turn, template_turns, trains_on

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value torch's cross entropy skips
_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"

CHATML = (
    _BOS + "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Meta's Llama 3 Instruct template; contents are trimmed as there.
LLAMA_3 = (
    _BOS + "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim }}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# HuggingFaceH4/zephyr-7b-beta's template, with its Jinja whitespace written out: every turn ends in eos + newline.
ZEPHYR = (
    _BOS + "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}{{ eos_token }}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Stanford Alpaca's prompt, one Instruction/Response pair per exchange; a system turn replaces the preamble.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA = (
    _BOS + "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% else %}{{ '" + ALPACA_PREAMBLE + "\\n\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Response:\\n' + message['content'] }}{{ eos_token }}{{ '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)
NAMED_TEMPLATES: dict[str, str] = {"chatml": CHATML, "llama-3": LLAMA_3, "zephyr": ZEPHYR, "alpaca": ALPACA}


def chat_template_name(tokenizer: PreTrainedTokenizerBase, name: str = "auto") -> str:
    """Which template `name` means for this tokenizer: `tokenizer` (its own) or a named one."""
    if name == "auto":
        return "tokenizer" if tokenizer.chat_template else "chatml"
    if name not in NAMED_TEMPLATES:
        raise DatasetError(f"chat_template: unknown template {name}; use auto or {', '.join(NAMED_TEMPLATES)}")
    return name


def resolve_chat_template(tokenizer: PreTrainedTokenizerBase, name: str = "auto") -> str:
    """The Jinja source `name` means for this tokenizer."""
    resolved = chat_template_name(tokenizer, name)
    return str(tokenizer.chat_template) if resolved == "tokenizer" else NAMED_TEMPLATES[resolved]


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    messages: list[Turn],
    *,
    add_generation_prompt: bool = False,
) -> str:
    """The text the template makes of a conversation, as apply_chat_template renders it for inference (turns'
    "weight" left out: it says what is trained, not what is written)."""
    text: Any = tokenizer.apply_chat_template(
        template_turns(messages), chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def _end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Special tokens that can close a turn (eos, <|im_end|>, <|eot_id|>, ...): anything special but bos/pad/unk."""
    special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    if tokenizer.eos_token_id is not None:
        special.add(tokenizer.eos_token_id)
    return special - {tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    messages: list[Turn],
    *,
    train_on_prompt: bool = False,
) -> dict[str, list[int]]:
    """input_ids and labels of a conversation; labels are IGNORE_INDEX except on each assistant turn's
    content and its end-of-turn token (and on everything with train_on_prompt). An assistant turn with OpenAI's
    `"weight": 0` is context, as a user turn is: its tokens stay IGNORE_INDEX (train_on_prompt trains them too).

    The template is rendered turn by turn: up to each assistant turn with the generation prompt (what
    the model is given at inference), then with that turn. The text grown is tokenized whole and the
    new ids are the difference, so token boundaries are those of the full conversation and the
    trained span starts exactly where the model starts generating. A template that closes only the whole
    conversation (Phi-3 puts eos after the last turn) renders an untrained tail that later turns replace:
    that tail is taken back, never a trained token.
    """
    ids: list[int] = []
    trained: list[bool] = []
    rendered = ""

    def extend(text: str, train: bool) -> list[int]:
        nonlocal rendered
        if not text.startswith(rendered):
            rendered = _take_back_tail(tokenizer, rendered, text, ids, trained)
        whole = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        new = whole[len(ids) :]
        if whole[: len(ids)] != ids:
            # The new text merged with the last token of the old: keep the boundary, tokenize the rest alone.
            new = list(tokenizer(text[len(rendered) :], add_special_tokens=False)["input_ids"])
        ids.extend(new)
        trained.extend([train] * len(new))
        rendered = text
        return new

    ends = _end_of_turn_ids(tokenizer)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        extend(render_chat(tokenizer, template, messages[:index], add_generation_prompt=True), False)
        turn = extend(render_chat(tokenizer, template, messages[: index + 1]), trains_on(message))
        # Learn the turn through its end-of-turn token; what follows it (a newline) is the next turn's markup.
        stop = next((i + 1 for i, token in enumerate(turn) if token in ends), None)
        if stop is None:  # no special end token: keep the learned span up to the last visible character
            stop = len(turn)
            while stop > 1 and not str(tokenizer.decode(turn[stop - 1 : stop])).strip():
                stop -= 1
        trained[len(ids) - len(turn) + stop :] = [False] * (len(turn) - stop)
    extend(render_chat(tokenizer, template, messages), False)  # trailing turns after the last answer
    labels = (
        list(ids) if train_on_prompt else [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained, strict=True)]
    )
    return {"input_ids": ids, "labels": labels}


def _take_back_tail(
    tokenizer: PreTrainedTokenizerBase, rendered: str, text: str, ids: list[int], trained: list[bool]
) -> str:
    """Drop the untrained ids at the end of `rendered` that `text` does not continue; the text kept."""
    common = len(os.path.commonprefix([rendered, text]))
    last_trained = max((i + 1 for i, keep in enumerate(trained) if keep), default=0)
    for keep in range(len(ids), last_trained - 1, -1):
        # The longest run of ids that is exactly the tokenization of a prefix `text` also starts with.
        kept_text = str(tokenizer.decode(ids[:keep])) if keep else ""
        fits = len(kept_text) <= common and rendered.startswith(kept_text)
        if fits and list(tokenizer(kept_text, add_special_tokens=False)["input_ids"]) == ids[:keep]:
            del ids[keep:], trained[keep:]
            return kept_text
    raise DatasetError(
        "the chat template renders earlier turns differently once later turns are added, so the "
        "assistant's tokens cannot be told apart exactly; set chat_template to chatml (or another name)"
    )


def warn_about_markup(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Warn when a named template's turn markers are not tokens of this tokenizer: the model then learns
    them as plain text, and generation stops only if the model also learned eos."""
    markers = {"chatml": ["<|im_start|>", "<|im_end|>"], "llama-3": ["<|start_header_id|>", "<|eot_id|>"]}
    missing = [m for m in markers.get(name, []) if len(tokenizer(m, add_special_tokens=False)["input_ids"]) != 1]
    if missing:
        log.warning(
            "chat template %s: %s are not single tokens of this tokenizer; they are learned as plain text. "
            "Use the tokenizer's own template (auto) or one whose markers it has.",
            name,
            ", ".join(missing),
        )
