"""The playground's conversation: what each side is given is what training put before the answer to that turn."""

from __future__ import annotations

from transformers import AutoTokenizer

from app.config import TINY_MODEL_DIR
from app.contracts.playground import PlaygroundRequest
from worker.data.chat import encode_conversation, resolve_chat_template
from worker.serving.conversation import prompt_ids

SYSTEM = {"role": "system", "content": "You answer in one word."}
ASK = {"role": "user", "content": "Capital of France?"}
AGAIN = {"role": "user", "content": "And of Japan?"}


def test_each_side_continues_its_own_conversation_through_the_runs_template_as_training_encoded_it() -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    messages = [SYSTEM, ASK, {"role": "assistant", "content": "Paris"}, AGAIN]
    request = PlaygroundRequest.model_validate({"run_id": "a", "messages": messages, "base_answers": ["Lyon"]})
    base, adapter = prompt_ids(tokenizer, "zephyr", request)
    # zephyr, not the tokenizer's own template (which ends no user turn with </s>): the run's choice decides.
    turns = "<s><|system|>\nYou answer in one word.</s>\n<|user|>\nCapital of France?</s>\n<|assistant|>\n{}</s>\n"
    ending = "<|user|>\nAnd of Japan?</s>\n<|assistant|>\n"
    assert tokenizer.decode(base) == turns.format("Lyon") + ending
    assert tokenizer.decode(adapter) == turns.format("Paris") + ending
    # The very ids training had in front of the second answer, for the same conversation.
    for chat_template in ("zephyr", "chatml", "auto"):
        template = resolve_chat_template(tokenizer, chat_template)
        trained = encode_conversation(tokenizer, template, [*messages, {"role": "assistant", "content": "Tokyo"}])
        given = prompt_ids(tokenizer, chat_template, request)[1]
        assert trained["input_ids"][: len(given)] == given, chat_template
        assert trained["labels"][len(given) - 1] == -100 and trained["labels"][len(given)] != -100


def test_a_single_prompt_goes_through_the_runs_template_when_chat_is_on() -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    chat = PlaygroundRequest(run_id="a", prompt="Hi", chat=True)
    assert tokenizer.decode(prompt_ids(tokenizer, "chatml", chat)[0]) == (
        "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = PlaygroundRequest(run_id="a", prompt="Hi", chat=False)
    assert tokenizer.decode(prompt_ids(tokenizer, "chatml", plain)[0]) == "<s>Hi"
