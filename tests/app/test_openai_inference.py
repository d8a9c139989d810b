"""OpenAI's models and chat completions under /v1, driven by the official `openai` SDK, unchanged, against uvicorn, a
real train worker and a real generate worker on the tiny model: the bundled base and a run trained here are listed
and answer, whole and streamed alike, with OpenAI's usage, stop, max_tokens, n and seed; what is not supported is
refused naming the parameter; a full queue is a RateLimitError; a deleted fine-tune is gone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from app.config import TINY_MODEL_DIR
from app.processes import free_port
from tests.conftest import QUICK_RUN, Stack, stack_env, wait_for
from tests.processes import Processes

pytestmark = pytest.mark.slow  # trains jobs of the tiny model

ASK = [{"role": "user", "content": "解析地址：臺北市大安區復興南路一段390號2樓"}]


@dataclass
class Servers:
    url: str
    busy_url: str  # a web whose queue bound is 1 and whose Redis no generate worker reads
    ft: str  # the fine-tuned model's id
    run_id: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_database_url: str) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("inference")
    port, busy_port = free_port(), free_port()
    env = stack_env(root / "data", redis_url, module_database_url, port)
    db = int(env["REDIS_URL"].rsplit("/", 1)[1])
    busy_env = env | {
        "REDIS_URL": env["REDIS_URL"].rsplit("/", 1)[0] + f"/{db % 15 + 1}",
        "LORADECK_OPENAI_PENDING_REQUESTS": "1",
    }
    processes, busy = Processes(root, env), Processes(root, busy_env)
    processes.migrate()
    try:
        processes.start_worker(log="worker.log")  # train and merge
        processes.start_worker("--queues", "generate", log="generator.log")
        processes.start_web(port, log="web.log")
        busy.start_web(busy_port, log="busy-web.log")
        url = f"http://127.0.0.1:{port}"
        stack = Stack(url=url, env=env, data_dir=root / "data", worker_log=root / "worker.log")
        run = stack.start_run(**(QUICK_RUN | {"name": "openai-inference", "max_steps": 2, "save_steps": 1}))
        assert stack.wait_run(run["id"], timeout=180)["status"] == "succeeded"
        yield Servers(url, f"http://127.0.0.1:{busy_port}", f"ft:tiny-llama:loradeck:{run['id']}", run["id"])
    finally:
        busy.close()
        processes.close()


def client(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="sk-anything", max_retries=0, timeout=120)


def streamed(sdk: OpenAI, **request: Any) -> tuple[list[str], list[str | None], Any, list[Any]]:
    """The texts, finish reasons and usage a stream gives, and its chunks."""
    chunks = list(sdk.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request))
    n = request.get("n", 1)
    texts, reasons = [""] * n, [None] * n
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    return texts, reasons, chunks[-1].usage, chunks


def test_models_lists_the_bundled_base_and_the_trained_run(servers: Servers) -> None:
    sdk = client(servers.url)
    models = {model.id: model for model in sdk.models.list()}
    assert models["tiny-llama"].owned_by == "loradeck"
    assert models[servers.ft].owned_by == "user" and models[servers.ft].created > 0
    assert sdk.models.retrieve(servers.ft).id == servers.ft
    checkpoint = sdk.models.retrieve(f"{servers.ft}:ckpt-step-1")
    assert checkpoint.id == f"{servers.ft}:ckpt-step-1" and checkpoint.object == "model"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(f"{servers.ft}:ckpt-step-7")  # no checkpoint at that step
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(f"ft:tiny-llama:other-suffix:{servers.run_id}")


@pytest.mark.parametrize("model", ["tiny-llama", "ft", "ckpt"])
def test_streamed_and_whole_answers_are_the_same_at_temperature_zero(servers: Servers, model: str) -> None:
    model_id = {"tiny-llama": "tiny-llama", "ft": servers.ft, "ckpt": f"{servers.ft}:ckpt-step-1"}[model]
    sdk = client(servers.url)
    whole = sdk.chat.completions.create(model=model_id, messages=ASK, temperature=0, max_tokens=24)  # type: ignore[arg-type]
    texts, reasons, usage, chunks = streamed(sdk, model=model_id, messages=ASK, temperature=0, max_tokens=24)
    assert whole.object == "chat.completion" and whole.model == model_id
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content
    assert texts == [whole.choices[0].message.content] and reasons == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert len(chunks) > 4 and chunks[-1].choices == []
    assert usage == whole.usage and whole.usage is not None
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_usage_counts_the_prompt_as_tokenized_and_the_tokens_generated(servers: Servers) -> None:
    sdk = client(servers.url)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    chat_ids = tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=True)["input_ids"]
    whole = sdk.chat.completions.create(model="tiny-llama", messages=ASK, temperature=0, max_tokens=5)  # type: ignore[arg-type]
    assert whole.usage is not None and whole.usage.prompt_tokens == len(chat_ids)
    assert whole.usage.completion_tokens == 5 and whole.choices[0].finish_reason == "length"
    # The fine-tune trained on prompt/completion rows: one user message is its prompt, raw, as it trained.
    tuned = sdk.chat.completions.create(model=servers.ft, messages=ASK, temperature=0, max_tokens=5)  # type: ignore[arg-type]
    assert tuned.usage is not None and tuned.usage.prompt_tokens == len(tokenizer(ASK[0]["content"])["input_ids"])
    text = sdk.completions.create(model=servers.ft, prompt=ASK[0]["content"], temperature=0, max_tokens=5)
    assert text.object == "text_completion" and text.choices[0].text == tuned.choices[0].message.content
    assert text.usage == tuned.usage
    pieces = list(sdk.completions.create(model=servers.ft, prompt=ASK[0]["content"], temperature=0, max_tokens=5,
                                         stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(choice.text for piece in pieces for choice in piece.choices) == text.choices[0].text
    assert pieces[-1].usage == text.usage and pieces[-2].choices[0].finish_reason == "length"


def test_stop_ends_the_answer_before_the_stop_text(servers: Servers) -> None:
    sdk = client(servers.url)
    full = sdk.chat.completions.create(model=servers.ft, messages=ASK, temperature=0, max_tokens=32)  # type: ignore[arg-type]
    content = full.choices[0].message.content or ""
    assert len(content) > 8, content
    stop = content[4:7]
    cut = sdk.chat.completions.create(model=servers.ft, messages=ASK, temperature=0, max_tokens=32, stop=[stop, "@@"])  # type: ignore[arg-type]
    assert cut.choices[0].message.content == content[: content.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    texts, reasons, _, _ = streamed(sdk, model=servers.ft, messages=ASK, temperature=0, max_tokens=32, stop=stop)
    assert texts == [cut.choices[0].message.content] and reasons == ["stop"]


def test_n_choices_each_with_its_index_and_a_seed_repeats_them(servers: Servers) -> None:
    sdk = client(servers.url)
    request: dict[str, Any] = {"model": "tiny-llama", "messages": ASK, "temperature": 1.0, "max_tokens": 12, "n": 2}
    first = sdk.chat.completions.create(seed=11, **request)
    again = sdk.chat.completions.create(seed=11, **request)
    assert [choice.index for choice in first.choices] == [0, 1]
    texts = [choice.message.content for choice in first.choices]
    assert texts == [choice.message.content for choice in again.choices]
    assert texts[0] != texts[1]
    stream_texts, _, usage, _ = streamed(sdk, seed=11, **request)
    assert stream_texts == texts and usage == first.usage


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
        ("logprobs", {"logprobs": True}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("presence_penalty", {"presence_penalty": 0.5}),
        ("n", {"n": 99}),
        ("stop", {"stop": ["a", "b", "c", "d", "e"]}),
    ],
)
def test_an_unsupported_parameter_is_refused_naming_it(servers: Servers, param: str, extra: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(servers.url).chat.completions.create(model="tiny-llama", messages=ASK, **extra)  # type: ignore[arg-type]
    assert refused.value.param == param, refused.value.body


def test_a_conversation_to_a_fine_tune_trained_without_a_template_is_refused(servers: Servers) -> None:
    turns = [{"role": "system", "content": "Parse."}, *ASK]
    with pytest.raises(openai.BadRequestError) as refused:
        client(servers.url).chat.completions.create(model=servers.ft, messages=turns)  # type: ignore[arg-type]
    assert refused.value.param == "messages" and "/v1/completions" in refused.value.message


def test_an_unknown_model_is_not_found(servers: Servers) -> None:
    sdk = client(servers.url)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=ASK)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="ft:tiny-llama:loradeck:0123abcd", messages=ASK, stream=True)  # type: ignore[arg-type]


def test_a_full_queue_is_refused_with_a_rate_limit_error(servers: Servers) -> None:
    """The busy web's bound is 1 and no worker answers it: the first request waits (its client gives up, the
    request stays queued), the next is refused at once."""
    sdk = OpenAI(base_url=servers.busy_url + "/v1", api_key="sk-anything", max_retries=0, timeout=4)
    with pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model="tiny-llama", messages=ASK)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="tiny-llama", messages=ASK, stream=True)  # type: ignore[arg-type]
    assert refused.value.code == "rate_limit_exceeded"
    assert "LORADECK_OPENAI_PENDING_REQUESTS" in refused.value.message


def test_a_merged_fine_tune_answers_as_its_adapter_did(servers: Servers) -> None:
    sdk = client(servers.url)
    request: dict[str, Any] = {"model": servers.ft, "messages": ASK, "temperature": 0, "max_tokens": 24}
    adapter = sdk.chat.completions.create(**request)
    url = f"{servers.url}/api/v1/runs/{servers.run_id}"
    assert httpx.post(url + "/merge", json={"dtype": "float32"}, timeout=30).status_code == 202

    def merged() -> bool:
        return any(a["kind"] == "merged" and a["status"] == "ready" for a in httpx.get(url + "/artifacts").json())

    wait_for(merged, 120, "the merge")
    answer = sdk.chat.completions.create(**request)
    assert answer.choices[0].message.content == adapter.choices[0].message.content
    assert answer.usage == adapter.usage


def test_a_deleted_fine_tune_is_gone_and_a_base_cannot_be_deleted(servers: Servers) -> None:
    sdk = client(servers.url)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.models.delete("tiny-llama")
    assert "base model" in refused.value.message
    deleted = sdk.models.delete(servers.ft)
    assert deleted.deleted is True and deleted.id == servers.ft
    assert servers.ft not in {model.id for model in sdk.models.list()}
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(servers.ft)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model=servers.ft, messages=ASK)  # type: ignore[arg-type]
    kinds = {artifact["kind"] for artifact in httpx.get(f"{servers.url}/api/v1/runs/{servers.run_id}/artifacts").json()}
    assert not kinds & {"adapter", "merged"}
    assert sdk.models.retrieve(f"{servers.ft}:ckpt-step-1")  # its checkpoints stay, with the run
