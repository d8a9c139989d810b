"""What the playground gives each model: a prompt, or a conversation formatted exactly as the run trained.

A conversation is rendered with the run's chat template as `worker.data.chat` resolves it for training (`auto`:
the tokenizer's own, else chatml), with the generation prompt after the last user turn, and tokenized without
added special tokens, as training tokenizes it: so the ids are those training put before the answer to that
turn. Each side continues its own conversation (`PlaygroundRequest.conversations`), so the two prompts differ
from the second turn on.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from app.contracts.playground import PlaygroundRequest
from worker.data.chat import render_chat, resolve_chat_template
from worker.data.encode import encode_prompt


def conversation_ids(
    tokenizer: PreTrainedTokenizerBase, chat_template: str, messages: list[dict[str, str]]
) -> list[int]:
    """The ids a model is given to answer the conversation's last turn, through the run's chat template."""
    template = resolve_chat_template(tokenizer, chat_template)
    text = render_chat(tokenizer, template, messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, chat_template: str, request: PlaygroundRequest) -> list[list[int]]:
    """The ids each side (base first) is given for the request: its own conversation, the prompt as one user
    turn through the run's template (chat), or the prompt as it is (a run on prompt/completion or text rows)."""
    if request.messages is not None:
        return [conversation_ids(tokenizer, chat_template, turns) for turns in request.conversations()]
    prompt = request.prompt or ""
    if request.chat:
        ids = conversation_ids(tokenizer, chat_template, [{"role": "user", "content": prompt}])
    else:
        ids = encode_prompt(tokenizer, prompt)
    return [ids, ids]
