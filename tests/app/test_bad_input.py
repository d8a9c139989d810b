"""Bad input, case by case: each gets a 4xx whose message names what to fix, and nothing is stored.

Across the JSON API, the new-run form and dataset uploads: wrong types, out-of-range values, malformed and
oversized files, path traversal in every path-like field, and encoded and unicode tricks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import TINY_MODEL_DIR
from app.models import Artifact, Dataset, Metric, Run
from app.web.forms import LINE_FIELDS

# (what, method, path, keyword arguments for the request, status, words the message must contain)
RUN_SPEC_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("rank of the wrong type", {"r": "x"}, "valid integer"),
    ("rank zero", {"r": 0}, "greater than or equal to 1"),
    ("rank too large", {"r": 2000}, "less than or equal to 1024"),
    ("dropout of 1.5", {"lora_dropout": 1.5}, "less than 1"),
    ("negative learning rate", {"learning_rate": -1}, "greater than 0"),
    ("zero steps", {"max_steps": 0}, "max_steps: 0 trains nothing"),
    ("negative steps", {"max_steps": -5}, "greater than or equal to -1"),
    ("zero batch", {"per_device_train_batch_size": 0}, "greater than or equal to 1"),
    ("unknown method", {"method": "full"}, "'lora', 'qlora', 'ia3' or 'prompt_tuning'"),
    ("unknown quantization", {"quantization": "3bit"}, "'auto', 'none', '8bit' or '4bit'"),
    ("empty target modules", {"target_modules": ""}, "target_modules is empty"),
    ("shell in a module name", {"target_modules": ["q_proj;rm -rf /"]}, "are not module names"),
    ("all-linear with others", {"target_modules": ["all-linear", "q_proj"]}, "give it alone"),
    ("base model traversal", {"base_model": "assets/" + "../" * 12 + "etc"}, "outside the model directories"),
    ("base model outside the roots", {"base_model": "/etc"}, "outside the model directories"),
    ("base model without config", {"base_model": "assets"}, "directory without config.json"),
    ("encoded traversal", {"base_model": "%2e%2e/%2e%2e/etc"}, "outside the model directories"),
    ("hub id that climbs", {"base_model": "org/.."}, "outside the model directories"),
    ("hub id with a double dash", {"base_model": "org/a--b"}, "outside the model directories"),
    ("hub id ending in .git", {"base_model": "org/model.git"}, "outside the model directories"),
    ("fullwidth slash hub id", {"base_model": "org\uff0fmodel"}, "neither a local model directory"),
    ("dataset outside the roots", {"dataset": "/etc/passwd"}, "outside the dataset directories"),
    ("dataset traversal", {"dataset": "../../../etc/passwd.jsonl"}, "outside the dataset directories"),
    ("missing dataset inside the roots", {"dataset": "assets/nope.jsonl"}, "no file at"),
    ("dataset through assets", {"dataset": "assets/../../../../etc/hosts"}, "outside the dataset directories"),
    ("device file as dataset", {"dataset": "/dev/null"}, "outside the dataset directories"),
    ("eval dataset from /proc", {"eval_dataset": "/proc/self/environ"}, "outside the dataset directories"),
    ("dataset of another type", {"dataset": "assets/datasets/tw-address/README.md"}, "README.md is not one of"),
    ("unknown field", {"lora_rank": 8}, "Extra inputs are not permitted"),
    ("name too long", {"name": "n" * 300}, "at most 200 characters"),
    ("NUL in the name", {"name": "a\x00b"}, "invisible control characters (U+0000)"),
    ("right-to-left override", {"name": "safe\u202etxt.exe"}, "invisible control characters (U+202E)"),
    (
        "hidden text in a regression prompt",
        {"regression_prompts": ["ok", "a\u202eb"]},
        "regression_prompts: prompt 2: contains invisible control characters (U+202E)",
    ),
    ("too many regression prompts", {"regression_prompts": ["p"] * 21}, "at most 20 items"),
    ("qlora on an unquantized base", {"method": "qlora", "quantization": "none"}, "trains on a 4-bit base"),
    ("DoRA with (IA)3", {"method": "ia3", "use_dora": True}, "use_dora: only for methods lora and qlora"),
    ("early stopping without evals", {"early_stopping_patience": 2}, "early_stopping_patience: needs eval data"),
    (
        "early stopping, evals only at the end",
        {"early_stopping_patience": 2, "eval_split": 0.1, "eval_steps": 0},
        "eval_steps 0 evaluates only at the end",
    ),
    (
        "early stopping, checkpoints off the auto evals",
        {"early_stopping_patience": 2, "eval_split": 0.1, "max_steps": 60, "save_steps": 50},
        "multiple of eval_steps (auto: 12 for max_steps 60)",
    ),
    (
        "early stopping, auto evals of an unknown length",
        {"early_stopping_patience": 2, "eval_split": 0.1, "max_steps": -1},
        "with max_steps -1 give eval_steps as a number",
    ),
    ("eval_steps as a word", {"eval_steps": "often"}, "eval_steps: 'often' is not a number of steps"),
    (
        "negative eval_steps",
        {"eval_steps": -5},
        "is not a number of steps; give a whole number (0: only at the end) or auto",
    ),
    ("eval_steps as a superscript", {"eval_steps": "²"}, "is not a number of steps"),
    ("eval_steps without eval data", {"eval_steps": 5, "eval_dataset": ""}, "eval_steps: there is nothing to evaluate"),
    ("eval split too large", {"eval_split": 0.9}, "less than or equal to 0.5"),
    ("two eval sources", {"eval_split": 0.1, "eval_dataset": "assets/datasets/tw-address/eval.jsonl"}, "not both"),
    ("huge sequence length", {"max_seq_length": 10**12}, "less than or equal to 1048576"),
    ("negative seed", {"seed": -1}, "greater than or equal to 0"),
    ("seed past 64 bits", {"seed": 2**64}, "less than or equal to 4294967295"),
    ("checkpoints past 64 bits", {"save_steps": 2**63}, "less than or equal to 10000000"),
    ("boolean as prose", {"use_dora": "maybe"}, "valid boolean"),
    ("packing with prompt tuning", {"method": "prompt_tuning", "packing": True}, "packing: not with"),
]

# The form sends only RunSpec's fields, so an unknown one cannot be typed into it.
API_ONLY = {"unknown field"}

OTHER_CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("body that is not JSON", "POST", "/api/v1/runs", {"content": b"garbage", "headers": {"content-type": "application/json"}}, 422, "JSON decode error"),
    ("body that is a list", "POST", "/api/v1/runs", {"json": [1, 2]}, 422, "valid dictionary"),
    ("NaN learning rate", "POST", "/api/v1/runs", {"content": b'{"learning_rate": NaN}', "headers": {"content-type": "application/json"}}, 422, "finite number"),
    ("Infinity learning rate", "POST", "/api/v1/runs", {"content": b'{"learning_rate": Infinity, "max_steps": 5}', "headers": {"content-type": "application/json"}}, 422, "finite number"),
    ("infinite gradient clip", "POST", "/api/v1/runs", {"content": b'{"max_grad_norm": Infinity, "max_steps": 5}', "headers": {"content-type": "application/json"}}, 422, "finite number"),
    ("NaN temperature", "POST", "/api/v1/playground", {"content": b'{"run_id": "abc", "prompt": "hi", "temperature": NaN}', "headers": {"content-type": "application/json"}}, 422, "finite number"),
    ("metrics after step 2**63", "GET", "/api/v1/runs/RUN/metrics?after_step=9223372036854775808", {}, 422, "less than or equal to"),
    ("metrics after step 10**12", "GET", "/api/v1/runs/RUN/metrics?after_step=999999999999", {}, 422, "less than or equal to"),
    ("events after step 2**63", "GET", "/api/v1/runs/RUN/events?after_step=9223372036854775808", {}, 422, "less than or equal to"),
    ("estimate of a model outside the roots", "POST", "/api/v1/estimate", {"json": {"base_model": "/etc"}}, 422, "outside the model directories"),
    ("unknown status filter", "GET", "/api/v1/runs?status=bogus", {}, 422, "'queued', 'running'"),
    ("zero list limit", "GET", "/api/v1/runs?limit=0", {}, 422, "greater than or equal to 1"),
    ("too few chart points", "GET", "/api/v1/runs/RUN/metrics?max_points=5", {}, 422, "greater than or equal to 10"),
    ("log of a million lines", "GET", "/api/v1/runs/RUN/log?lines=1000000", {}, 422, "less than or equal to 5000"),
    ("run id traversal", "GET", "/api/v1/runs/..%2F..%2Fetc%2Fpasswd", {}, 404, "Not Found"),
    ("artifact id traversal", "GET", "/api/v1/artifacts/..%2Fsecret/download", {}, 404, "Not Found"),
    ("artifact id with dots", "GET", "/api/v1/artifacts/..secret/download", {}, 404, "no artifact with id"),
    ("cancel an unknown run", "POST", "/api/v1/runs/nope/cancel", {}, 404, "no run with id nope"),
    ("merge into int4", "POST", "/api/v1/runs/RUN/merge", {"json": {"dtype": "int4"}}, 422, "'auto', 'bfloat16'"),
    ("merge a queued run", "POST", "/api/v1/runs/RUN/merge", {}, 409, "a run is merged once its adapter is saved"),
    ("unknown dataset", "GET", "/api/v1/datasets/nope", {}, 404, "no dataset with id nope"),
    ("playground events of an unknown id", "GET", "/api/v1/playground/deadbeef/events", {}, 404, "no playground request with id deadbeef"),
    ("playground for an unknown run", "POST", "/api/v1/playground", {"json": {"run_id": "abc", "prompt": "hi"}}, 404, "no run with id abc"),
    ("playground compare with a path", "POST", "/api/v1/playground", {"json": {"run_id": "RUN", "prompt": "hi", "compare": "../../x"}}, 422, "String should match pattern"),
    ("playground before any adapter", "POST", "/api/v1/playground", {"json": {"run_id": "RUN", "prompt": "hi"}}, 409, "this run has no adapter; it has nothing yet"),
    ("playground greedy below zero", "POST", "/api/v1/playground", {"json": {"run_id": "RUN", "prompt": "hi", "temperature": -1}}, 422, "greater than or equal to 0"),
    ("playground prompt and messages", "POST", "/api/v1/playground", {"json": {"run_id": "RUN", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}}, 422, "prompt, messages: give exactly one"),
    ("playground turn of an unknown role", "POST", "/api/v1/playground", {"json": {"run_id": "RUN", "messages": [{"role": "bot", "content": "hi"}]}}, 422, "'system', 'user' or 'assistant'"),
    ("playground conversation of 41 turns", "POST", "/api/v1/playground", {"json": {"run_id": "RUN", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}] * 20 + [{"role": "user", "content": "hi"}]}}, 422, "at most 40 turns in one conversation"),
    ("playground hidden system prompt", "POST", "/api/v1/playground", {"json": {"run_id": "RUN", "messages": [{"role": "system", "content": "a\u202eb"}, {"role": "user", "content": "hi"}]}}, 422, "invisible control characters (U+202E)"),
    ("playground conversation with a prompt/completion run", "POST", "/api/v1/playground", {"json": {"run_id": "RUN", "messages": [{"role": "user", "content": "hi"}]}}, 422, "not on messages: send a prompt"),
    ("upload with a bad type", "POST", "/api/v1/datasets", {"files": {"file": ("x.exe", b"MZ")}}, 422, "is not one of .jsonl"),
    ("pickle upload", "POST", "/api/v1/datasets", {"files": {"file": ("w.pkl", b"\x80\x04K.")}}, 422, "is not one of"),
    ("empty upload", "POST", "/api/v1/datasets", {"files": {"file": ("e.jsonl", b"")}}, 422, "the file is empty"),
    ("oversized upload", "POST", "/api/v1/datasets", {"files": {"file": ("big.jsonl", b"x" * 4096)}}, 413, "upload limit"),
    ("upload without a file", "POST", "/api/v1/datasets", {"data": {"name": "x"}}, 422, "file"),
    ("upload with a text length", "POST", "/api/v1/datasets", {"files": {"file": ("a.jsonl", b"{}")}, "data": {"max_seq_length": "abc"}}, 422, "valid integer"),
    ("upload for a model elsewhere", "POST", "/api/v1/datasets", {"files": {"file": ("a.jsonl", b'{"text":"a"}')}, "data": {"base_model": "/etc"}}, 422, "outside the model directories"),
]  # fmt: skip


@pytest.fixture
def client(loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("LORADECK_MAX_UPLOAD_BYTES", "1024")
    from app.config import get_settings
    from app.main import app

    get_settings.cache_clear()
    with TestClient(app) as test_client:
        yield test_client
    get_settings.cache_clear()


def _state(data_dir: Path) -> tuple[dict[str, int], list[str]]:
    from app.db import get_sessionmaker

    with get_sessionmaker()() as session:
        counts = {
            m.__tablename__: session.scalar(select(func.count()).select_from(m)) or 0
            for m in (Run, Metric, Artifact, Dataset)
        }
    files = sorted(
        str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file() and "loradeck.db" not in p.name
    )
    return counts, files


def _message(response: Any) -> str:
    return str(response.json())


def test_every_bad_input_gets_a_4xx_naming_what_to_fix_and_stores_nothing(
    client: TestClient, loradeck_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    run = client.post("/api/v1/runs", json={"name": "the only run", "max_steps": 5}).json()
    data_dir = Path(loradeck_env["LORADECK_DATA_DIR"])
    before = _state(data_dir)
    failures = []
    for what, body, words in RUN_SPEC_CASES:
        response = client.post("/api/v1/runs", json={"max_steps": 5} | body)
        if response.status_code != 422 or words not in _message(response):
            failures.append(f"API {what}: {response.status_code} {response.text[:300]}")
        if what in API_ONLY:
            continue
        # The same values typed into the new-run form: lists as comma-separated text, booleans as checkboxes.
        form = {k: ("\n" if k in LINE_FIELDS else ", ").join(v) if isinstance(v, list)
                else str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in ({"max_steps": 5} | body).items()}  # fmt: skip
        page = client.post("/runs", data=form, headers={"HX-Request": "true"})
        if page.status_code != 422 or 'role="alert"' not in page.text:
            failures.append(f"form {what}: {page.status_code}")
    for what, method, path, kwargs, status, words in OTHER_CASES:
        if isinstance(kwargs.get("json"), dict) and kwargs["json"].get("run_id") == "RUN":
            kwargs = {**kwargs, "json": kwargs["json"] | {"run_id": run["id"]}}
        response = client.request(method, path.replace("RUN", run["id"]), **kwargs)
        if response.status_code != status or words not in _message(response):
            failures.append(f"{what}: {response.status_code} {response.text[:300]}")
    assert failures == [], "\n".join(failures)
    assert _state(data_dir) == before
    assert len(RUN_SPEC_CASES) + len(OTHER_CASES) >= 40
    assert logged_errors(caplog) == []


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the web logged as an error or with a traceback while the probes ran."""
    return [record.getMessage() for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]


# Found by an audit: each answered 500 with a traceback before. (what, method, path, request, status, words)
AUDIT_CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    *[(f"NUL in {field}", "POST", "/api/v1/runs", {"json": {"max_steps": 5, field: value}}, 422, f"{field}: contains invisible control characters (U+0000)")
      for field, value in (("base_model", "assets/a\x00b"), ("dataset", "assets/a\x00b.jsonl"), ("eval_dataset", "assets/e\x00.jsonl"))],
    *[(f"NUL in the form's {field}", "POST", "/runs", {"data": {"max_steps": "5", field: value}, "headers": {"HX-Request": "true"}}, 422, "U+0000")
      for field, value in (("base_model", "assets/a\x00b"), ("dataset", "assets/a\x00b.jsonl"), ("eval_dataset", "e\x00.jsonl"))],
    ("NUL in an upload's base_model", "POST", "/api/v1/datasets", {"files": {"file": ("a.jsonl", b'{"text":"a"}')}, "data": {"base_model": "a\x00b"}}, 422, "base_model: contains invisible control characters"),
    ("NUL in a description's base_model", "GET", "/api/v1/datasets/DATASET?base_model=a%00b", {}, 422, "base_model: contains invisible control characters"),
    ("NUL in the dataset page's base_model", "GET", "/datasets/DATASET?base_model=a%00b", {}, 200, "invisible control characters"),
    ("nested arrays as a run", "POST", "/api/v1/runs", {"content": b"[" * 2000 + b"]" * 2000, "headers": {"content-type": "application/json"}}, 422, "nested too deeply"),
    ("nested objects as a run", "POST", "/api/v1/runs", {"content": b'{"a":' * 2000 + b"1" + b"}" * 2000, "headers": {"content-type": "application/json"}}, 422, "nested too deeply"),
    ("nested arrays as an estimate", "POST", "/api/v1/estimate", {"content": b"[" * 2000 + b"]" * 2000, "headers": {"content-type": "application/json"}}, 422, "nested too deeply"),
    ("superscript two as an upload's length", "POST", "/api/v1/datasets", {"files": {"file": ("a.jsonl", b'{"text":"a"}')}, "data": {"max_seq_length": "\u00b2"}}, 422, "max_seq_length: Input should be a valid integer"),
    ("5000 digits as an upload's length", "POST", "/api/v1/datasets", {"files": {"file": ("a.jsonl", b'{"text":"a"}')}, "data": {"max_seq_length": "9" * 5000}}, 422, "max_seq_length: Input should be a valid integer"),
    ("superscript two as a description's length", "GET", "/api/v1/datasets/DATASET?max_seq_length=%C2%B2", {}, 422, "valid integer"),
    ("superscript two as the dataset page's length", "GET", "/datasets/DATASET?max_seq_length=%C2%B2", {}, 200, "max_seq_length: Input should be a valid integer"),
    ("metrics export as XML", "GET", "/compare/export?format=xml", {}, 422, "'csv' or 'json'"),
    ("delete a run while its merge is made", "DELETE", "/api/v1/runs/DONE", {}, 409, "a merge of it is being made"),
]  # fmt: skip


def test_what_an_audit_found_gets_a_4xx_and_no_process_logs_a_traceback(
    client: TestClient, loradeck_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoTokenizer

    from app.db import get_sessionmaker
    from app.schemas import SAMPLE_TRAIN
    from worker.data.describe import describe_dataset

    # A stored dataset as an upload leaves it: described for the bundled model.
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    description = describe_dataset(SAMPLE_TRAIN, tokenizer, max_seq_length=256).model_dump(mode="json")
    with get_sessionmaker()() as session:
        session.add(
            Dataset(
                id="ds1",
                name="d",
                filename="train.jsonl",
                sha256="0" * 64,
                path=str(SAMPLE_TRAIN),
                size_bytes=1,
                description=description,
            )
        )
        session.add(Run(id="done1", name="r", spec={"method": "lora"}, status="succeeded"))
        session.add(Artifact(id="merging1", run_id="done1", kind="merged", status="running"))
        session.commit()
    data_dir = Path(loradeck_env["LORADECK_DATA_DIR"])
    before = _state(data_dir)
    failures = []
    for what, method, path, kwargs, status, words in AUDIT_CASES:
        response = client.request(method, path.replace("DATASET", "ds1").replace("DONE", "done1"), **kwargs)
        if response.status_code != status or words not in response.text:
            failures.append(f"{what}: {response.status_code} {response.text[:300]}")
    assert failures == [], "\n".join(failures)
    assert _state(data_dir) == before
    assert logged_errors(caplog) == []
