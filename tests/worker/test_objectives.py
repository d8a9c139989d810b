"""Preference runs (DPO, ORPO, KTO) of the tiny model through the real engine, in-process with a real Redis: what a
user checks on the run page (the loss, the named metrics, the evaluation) and what the trainer really compares
against (the reference log-probabilities, computed here separately with stock transformers and PEFT)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import TINY_MODEL_DIR, get_settings
from app.models import ArtifactStatus, Run, RunStatus
from app.rundir import RunDir
from tests.conftest import QUICK_RUN
from tests.worker.conftest import TRAIN, module_env, run_spec, train_points, train_run
from worker.engine.objectives.preference_eval import pair_logps
from worker.engine.steps import build_trainer, prepare_training

pytestmark = pytest.mark.slow  # a dozen short DPO, ORPO and KTO runs: out of `make quick`

PAIRS = 12  # train pairs; 4 more are held out
DPO = QUICK_RUN | {
    "objective": "dpo",
    "method": "lora",
    "max_steps": 2,
    "logging_steps": 1,
    "per_device_train_batch_size": 4,
    "learning_rate": 5e-3,
    "max_seq_length": 96,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    """loradeck_env for the whole module, so the trained runs are shared by its tests; the data dir's root."""
    with module_env(tmp_path_factory, redis_url, "objectives") as root:
        yield root


def _pair(row: dict[str, str]) -> dict[str, str]:
    """The sample row's answer as chosen; the same JSON with number and floor lost as rejected."""
    answer = json.loads(row["completion"])
    wrong = answer | {"number": None, "floor": None}
    return {
        "prompt": row["prompt"],
        "chosen": row["completion"],
        "rejected": json.dumps(wrong, ensure_ascii=False, separators=(",", ":")),
    }


@pytest.fixture(scope="module")
def pair_files(env: Path) -> dict[str, Path]:
    rows = [json.loads(line) for line in TRAIN.read_text(encoding="utf-8").splitlines()[: PAIRS + 4]]
    pairs = [_pair(row) for row in rows]
    unpaired = [
        {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
        for p in pairs[:PAIRS]
        for key in ("chosen", "rejected")
    ]
    files = {"train": pairs[:PAIRS], "eval": pairs[PAIRS:], "four": pairs[:4], "unpaired": unpaired}
    paths = {}
    for name, records in files.items():
        paths[name] = env / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def sft_run(env: Path) -> Run:
    run = train_run(run_spec(QUICK_RUN, method="lora", max_steps=6, learning_rate=5e-3, max_seq_length=96))
    assert run.status == RunStatus.succeeded, run.error
    return run


@pytest.fixture(scope="module")
def dpo_run(pair_files: dict[str, Path]) -> Run:
    run = train_run(
        run_spec(
            DPO,
            dataset=str(pair_files["train"]),
            eval_dataset=str(pair_files["eval"]),
            task_eval_rows=2,
            eval_max_new_tokens=8,
        )
    )
    assert run.status == RunStatus.succeeded, run.error
    return run


def _stock_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probabilities of each sequence's completion tokens, with a plain forward pass."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(1)


def _base() -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32).eval()


def test_a_dpo_run_starts_at_ln2_and_logs_its_named_metrics(dpo_run: Run) -> None:
    first, *_ = points = train_points(dpo_run.id)
    # Policy and reference agree at step one: the sigmoid loss of a zero margin.
    assert first.loss == pytest.approx(math.log(2), abs=1e-3)
    assert first.values["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen"} <= set(first.values)
    assert [p.step for p in points] == [1, 2] and points[-1].values["rewards/margins"] != 0.0


def test_the_reference_is_the_base_before_and_after_training(env: Path, pair_files: dict[str, Path]) -> None:
    spec = run_spec(DPO, dataset=str(pair_files["four"]))
    setup = prepare_training(spec, RunDir.of("reference-check", get_settings()))
    trainer = build_trainer(setup, spec)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    expected = _stock_logps(_base(), batch)

    assert list(setup.model.peft_config) == ["default"]  # no second copy: the reference is the adapter switched off
    before = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    assert torch.allclose(before, expected, atol=1e-4)
    trainer.train()
    after = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    assert torch.allclose(after, expected, atol=1e-4)
    policy = _stock_logps(trainer.model.eval(), batch)
    assert not torch.allclose(policy, expected, atol=1e-2)  # while the policy moved
    # The evaluation scores pairs on the very tokens the trainer trains on.
    chosen, rejected = pair_logps(_base(), setup.tokenizer, [dict(r) for r in setup.train_data], max_length=96)
    assert torch.allclose(torch.tensor(chosen + rejected), expected, atol=1e-4)


def test_continuing_an_sft_run_starts_from_its_adapter_and_compares_with_it(
    sft_run: Run, pair_files: dict[str, Path]
) -> None:
    # Four pairs, a batch of four: the first step's batch is the whole file, whatever the order.
    run = train_run(run_spec(DPO, dataset=str(pair_files["four"]), init_from_run=sft_run.id))
    assert run.status == RunStatus.succeeded, run.error

    started = PeftModel.from_pretrained(_base(), str(RunDir.of(sft_run.id, get_settings()).adapter_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    records = [json.loads(line) for line in pair_files["four"].read_text(encoding="utf-8").splitlines()]
    chosen, rejected = pair_logps(started, tokenizer, records, max_length=96)
    first = train_points(run.id)[0]
    assert first.values["logps/chosen"] == pytest.approx(sum(chosen) / 4, abs=1e-3)
    assert first.values["logps/rejected"] == pytest.approx(sum(rejected) / 4, abs=1e-3)
    # The reference is the SFT-tuned policy, not the base: zero margin, loss ln 2.
    assert first.loss == pytest.approx(math.log(2), abs=1e-3)

    adapter_dir = RunDir.of(run.id, get_settings()).adapter_dir
    # Only the trained adapter is saved, in PEFT's format, not TRL's frozen copy of the starting one.
    assert (adapter_dir / "adapter_model.safetensors").is_file() and not (adapter_dir / "ref").exists()
    evaluation = run.evaluation or {}
    assert evaluation["starting_run"] == sft_run.id and sft_run.id in evaluation["base"]["label"]


def test_the_preference_evaluation_is_stored(dpo_run: Run, pair_files: dict[str, Path]) -> None:
    evaluation: dict[str, Any] = dpo_run.evaluation or {}
    scores = evaluation["preference"]
    assert scores["base"]["rows"] == scores["adapter"]["rows"] == 4
    records = [json.loads(line) for line in pair_files["eval"].read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    for side, model in (
        ("base", _base()),
        ("adapter", PeftModel.from_pretrained(_base(), str(RunDir.of(dpo_run.id, get_settings()).adapter_dir))),
    ):
        chosen, rejected = pair_logps(model.eval(), tokenizer, records, max_length=96)
        margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
        assert scores[side]["margin"] == pytest.approx(sum(margins) / 4, abs=1e-3)
        assert scores[side]["accuracy"] == sum(m > 0 for m in margins) / 4
    # The task evaluation too, with chosen as the expected answer, bounded by task_eval_rows.
    assert evaluation["task"]["base"]["rows"] == evaluation["task"]["adapter"]["rows"] == 2


@pytest.mark.parametrize(
    ("objective", "data", "named"),
    [
        ("orpo", "train", {"nll_loss", "log_odds_ratio", "rewards/margins", "rewards/accuracies"}),
        ("kto", "unpaired", {"kl", "logps/chosen", "rewards/chosen"}),
    ],
)
def test_orpo_and_kto_train_and_log_their_metrics(
    pair_files: dict[str, Path], objective: str, data: str, named: set[str]
) -> None:
    run = train_run(run_spec(DPO, objective=objective, dataset=str(pair_files[data])))
    assert run.status == RunStatus.succeeded, run.error
    points = train_points(run.id)
    assert [p.step for p in points] == [1, 2] and all(p.loss is not None for p in points)
    assert named <= set(points[0].values), points[0].values


def test_a_qlora_dpo_run_trains(pair_files: dict[str, Path]) -> None:
    run = train_run(run_spec(DPO, method="qlora", dataset=str(pair_files["four"])))
    assert run.status == RunStatus.succeeded, run.error
    first = train_points(run.id)[0]
    assert first.loss == pytest.approx(math.log(2), abs=1e-3)


def test_a_preference_adapter_merges_like_an_sft_one(dpo_run: Run) -> None:
    from tests.worker.test_merge import _merge

    _, merged = _merge(dpo_run.id)
    assert merged.status == ArtifactStatus.ready, merged.error
    assert merged.details["top1_agreement"] == 1.0 and merged.details["prompts"][0].startswith("解析地址")


def test_a_wrong_shape_and_a_missing_starting_adapter_are_refused(pair_files: dict[str, Path]) -> None:
    wrong = train_run(run_spec(DPO, dataset=str(TRAIN)))
    assert wrong.status == RunStatus.failed
    # Refused when the worker claims it (the pre-flight the API ran at submit), naming the shape and the fix.
    assert (wrong.error or "").startswith(
        "dataset: objective dpo trains on prompt/chosen/rejected rows; train.jsonl has prompt/completion rows: "
        "choose a prompt/chosen/rejected file, or objective sft or grpo"
    )

    gone = train_run(run_spec(DPO, dataset=str(pair_files["four"]), init_from_run="0" * 32))
    assert gone.status == RunStatus.failed and "init_from_run" in (gone.error or "")
