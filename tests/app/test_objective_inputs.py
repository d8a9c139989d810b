"""What the API and the form refuse for an objective before queueing, with the same message at both: a dataset or
eval file of a shape the objective does not train on (both ways), a method it does not allow, another objective's
field, and `init_from_run` of a run that is missing, still running or on another base model; a continued run takes
its adapter's shape from the run it continues; and the new-run page prefilled from a run."""

from __future__ import annotations

import html
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.models import Artifact, ArtifactKind, ArtifactStatus, Run, RunStatus
from app.schemas import RunSpec
from tests.conftest import QUICK_RUN

SFT_ROW = {"prompt": "Q: 1+1?\n", "completion": "2"}
PAIR_ROW = {"prompt": "Q: 1+1?\n", "chosen": "2", "rejected": "3"}
BASE = str(TINY_MODEL_DIR.resolve())


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """An SFT file and a preference file of each kind (training, eval), under the allowed dataset roots."""
    made = {}
    for name, row in (("sft", SFT_ROW), ("pairs", PAIR_ROW), ("sft_eval", SFT_ROW), ("pairs_eval", PAIR_ROW)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(row) for _ in range(4)) + "\n", encoding="utf-8")
        made[name] = str(path)
    return made


def api_refusal(client: TestClient, **spec: Any) -> dict[str, str]:
    """The API's 422 as field -> message; nothing was stored."""
    before = len(client.get("/api/v1/runs").json())
    response = client.post("/api/v1/runs", json=QUICK_RUN | spec)
    assert response.status_code == 422, response.text
    assert len(client.get("/api/v1/runs").json()) == before, "a run was stored"
    found = {}
    for error in response.json()["detail"]:
        message = str(error["msg"]).removeprefix("Value error, ")
        # A rule between fields is the body's: its message starts with the field it is about.
        where = [str(part) for part in error["loc"] if part != "body"]
        found[where[-1] if where else message.partition(":")[0]] = message
    return found


def form_refusal(client: TestClient, **values: Any) -> dict[str, str]:
    """The form's 422 as field -> the error shown under it."""
    data = {k: "\n".join(v) if isinstance(v, list) else str(v) for k, v in (QUICK_RUN | values).items()}
    response = client.post("/runs", data=data)
    assert response.status_code == 422, response.text[:2000]
    shown = r'<small class="error" role="alert" id="e-[^"]+" data-field="([^"]+)">([^<]*)</small>'
    found = re.findall(shown, response.text)
    return {name: html.unescape(message) for name, message in found}


def both_refuse(client: TestClient, field: str, message: str, **spec: Any) -> None:
    assert api_refusal(client, **spec).get(field) == message
    assert form_refusal(client, **spec).get(field) == message


def test_a_dataset_of_another_shape_is_refused_naming_the_shape_needed(
    client: TestClient, files: dict[str, str]
) -> None:
    both_refuse(
        client,
        "dataset",
        "dataset: objective dpo trains on prompt/chosen/rejected rows; sft.jsonl has prompt/completion rows: "
        "choose a prompt/chosen/rejected file, or objective sft or grpo",
        objective="dpo", method="lora", dataset=files["sft"], eval_dataset=files["pairs_eval"],
    )  # fmt: skip
    both_refuse(
        client,
        "dataset",
        "dataset: objective sft trains on prompt/completion or messages or text rows; pairs.jsonl has "
        "prompt/chosen/rejected rows: choose a prompt/completion or messages or text file, or objective dpo, orpo "
        "or kto",
        objective="sft", dataset=files["pairs"], eval_dataset=files["sft_eval"],
    )  # fmt: skip
    # The eval file likewise.
    both_refuse(
        client,
        "eval_dataset",
        "eval_dataset: objective dpo trains on prompt/chosen/rejected rows; sft_eval.jsonl has prompt/completion "
        "rows: choose a prompt/chosen/rejected file, or objective sft or grpo",
        objective="dpo", method="lora", dataset=files["pairs"], eval_dataset=files["sft_eval"],
    )  # fmt: skip
    # The right shapes are taken.
    dpo = {"objective": "dpo", "method": "lora", "dataset": files["pairs"], "eval_dataset": files["pairs_eval"]}
    ok = client.post("/api/v1/runs", json=QUICK_RUN | dpo)
    assert ok.status_code == 201, ok.text


def test_a_method_or_a_field_of_another_objective_is_refused(client: TestClient, files: dict[str, str]) -> None:
    pairs = {"dataset": files["pairs"], "eval_dataset": files["pairs_eval"]}
    both_refuse(
        client, "method", "method: objective dpo trains with method lora or qlora, not ia3",
        objective="dpo", method="ia3", **pairs,
    )  # fmt: skip
    # A file of the wrong shape is said in the same answer as the method.
    wrong = {"objective": "dpo", "method": "ia3", "dataset": files["sft"], "eval_dataset": files["pairs_eval"]}
    for answer in (api_refusal(client, **wrong), form_refusal(client, **wrong)):
        assert answer["method"].startswith("method: objective dpo trains with method lora or qlora")
        assert answer["dataset"].startswith("dataset: objective dpo trains on prompt/chosen/rejected rows;")
    both_refuse(client, "beta", "beta: only for objectives dpo, orpo, kto, grpo, not sft", objective="sft", beta=0.5)
    both_refuse(
        client, "packing", "packing: only for objective sft, not dpo",
        objective="dpo", method="lora", packing=True, **pairs,
    )  # fmt: skip
    # An objective that is no name at all (schemathesis sent an object) is a 422 naming the choices, not a 500.
    for bad in ({}, ["dpo"], "ppo"):
        assert (
            api_refusal(client, objective=bad)["objective"] == "Input should be 'sft', 'dpo', 'orpo', 'kto' or 'grpo'"
        )


def stored_run(*, status: RunStatus, adapter: bool = True, **spec: Any) -> str:
    """A run row as training leaves it (its status, its adapter artifact), for a new run to continue."""
    from app.db import get_sessionmaker

    with get_sessionmaker()() as session:
        run = Run(name="start", spec=RunSpec(**spec).model_dump(mode="json"), status=status)
        session.add(run)
        session.flush()
        if adapter:
            session.add(Artifact(run_id=run.id, kind=ArtifactKind.adapter, status=ArtifactStatus.ready, path="adapter"))
        session.commit()
        return run.id


@pytest.fixture
def other_base(tmp_path: Path) -> str:
    directory = tmp_path / "other-tiny"
    shutil.copytree(TINY_MODEL_DIR, directory)
    return str(directory.resolve())


def test_init_from_run_must_be_a_finished_run_with_an_adapter_on_the_same_base(
    client: TestClient, files: dict[str, str], other_base: str
) -> None:
    dpo = {"objective": "dpo", "method": "lora", "dataset": files["pairs"], "eval_dataset": files["pairs_eval"]}
    both_refuse(
        client, "init_from_run",
        "init_from_run: no run with id nosuchrun; choose a succeeded or stopped run (its id is on its page)",
        init_from_run="nosuchrun", **dpo,
    )  # fmt: skip
    running = stored_run(status=RunStatus.running, base_model=BASE, method="lora")
    both_refuse(
        client, "init_from_run",
        f"init_from_run: run {running} is running; continue from a succeeded or stopped run",
        init_from_run=running, **dpo,
    )  # fmt: skip
    adapterless = stored_run(status=RunStatus.stopped, adapter=False, base_model=BASE, method="lora")
    both_refuse(
        client, "init_from_run",
        f"init_from_run: run {adapterless} has no saved adapter; continue from a run whose adapter is saved",
        init_from_run=adapterless, **dpo,
    )  # fmt: skip
    elsewhere = stored_run(status=RunStatus.succeeded, base_model=other_base, method="lora")
    message = (
        f"init_from_run: run {elsewhere} was trained on base model {other_base}; this run's base_model is {BASE} — "
        f"choose a run on {BASE} or change base_model"
    )
    assert api_refusal(client, init_from_run=elsewhere, base_model=BASE, **dpo)["init_from_run"] == message
    shown = form_refusal(client, init_from_run=elsewhere, base_model=BASE, **dpo)
    assert shown["init_from_run"] == message and shown["base_model"] == message  # both sides of it
    prompt_tuned = stored_run(status=RunStatus.succeeded, base_model=BASE, method="prompt_tuning")
    both_refuse(
        client, "init_from_run",
        f"init_from_run: run {prompt_tuned} trained a prompt_tuning adapter, which a lora run cannot continue: "
        "set method prompt_tuning, or choose a run of method lora or qlora",
        init_from_run=prompt_tuned, objective="sft", method="lora",
    )  # fmt: skip


def test_a_continued_run_takes_its_adapter_shape_from_the_run_it_continues(
    client: TestClient, files: dict[str, str]
) -> None:
    shape = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_rslora": True, "bias": "lora_only"}
    start = stored_run(status=RunStatus.succeeded, base_model=BASE, method="lora", **shape)
    response = client.post(
        "/api/v1/runs",
        json=QUICK_RUN | {"objective": "dpo", "method": "qlora", "init_from_run": start, "r": 16, "lora_alpha": 32,
                          "dataset": files["pairs"], "eval_dataset": files["pairs_eval"], "base_model": BASE},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    stored = response.json()["spec"]
    assert {name: stored[name] for name in shape} == shape
    assert stored["init_from_run"] == start and stored["method"] == "qlora"  # lora and qlora: one adapter family


def field_value(page: str, name: str) -> str:
    found = re.search(rf'<input id="f-{name}" name="{name}" type="\w+" value="([^"]*)"', page)
    assert found, f"no input {name}"
    return html.unescape(found.group(1))


def selected(page: str, name: str) -> str:
    select = re.search(rf'<select id="f-{name}" name="{name}".*?</select>', page, re.S)
    assert select, f"no select {name}"
    chosen = re.search(r'<option value="([^"]*)"[^>]*\bselected\b', select.group(0))
    assert chosen, f"nothing selected in {name}"
    return chosen.group(1)


def test_a_new_run_prefilled_from_a_run_holds_it_its_base_model_and_the_objective(
    client: TestClient, other_base: str
) -> None:
    start = stored_run(status=RunStatus.succeeded, base_model=other_base, method="lora", learning_rate=1e-3)
    page = client.get(f"/runs/new?init_from_run={start}&objective=dpo")
    assert page.status_code == 200
    assert field_value(page.text, "init_from_run") == start
    assert field_value(page.text, "base_model") == other_base
    assert selected(page.text, "objective") == "dpo"
    # The rest as a new form has it: the sample's pairs and their DPO recipe, not the starting run's learning rate.
    assert field_value(page.text, "dataset") == str(SAMPLE_DATASET_DIR / "preference.jsonl")
    assert float(field_value(page.text, "learning_rate")) == 3e-5
    assert float(field_value(page.text, "beta")) == 0.1
    assert 'data-field="packing"' in page.text and re.search(r'data-field="packing"[^>]*hidden', page.text)
