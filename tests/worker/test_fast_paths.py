"""The throughput switches (worker.engine.fastpaths): each one's on and off reach what trains (TrainingArguments,
the collator), auto picks the fast path only where it is correct and says why not elsewhere (the CPU, no Triton,
no liger-kernel, an architecture Liger does not cover, prompt tuning), an impossible "on" fails the run at once
naming the field, and a real run records its choices where the run page and the API read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from app.config import TINY_MODEL_DIR
from app.models import RunStatus
from app.rundir import RunDir
from app.schemas import SAMPLE_PAIRS, RunSpec
from app.web.api_models import RunOut
from app.web.forms import build_fields
from tests.worker.conftest import create_run, read_run, run_spec, train_points
from tests.worker.families import FAMILIES, SIZES
from worker.data.encode import PackedRowsCollator, PadCollator, make_collator
from worker.engine.configs import training_arguments
from worker.engine.fastpaths import (
    GIB,
    PACKING_CHECKED,
    DeviceFacts,
    FastPath,
    applied,
    resolve,
)
from worker.errors import RunError

CPU = DeviceFacts(cuda=False)
GPU_WITHOUT_TRITON = DeviceFacts(cuda=True, free_memory_bytes=80 * GIB, triton=False)
GPU_WITHOUT_LIGER = DeviceFacts(cuda=True, free_memory_bytes=80 * GIB, triton=True, liger_model_types=None)
GPU_WITH_LIGER = DeviceFacts(
    cuda=True, free_memory_bytes=80 * GIB, triton=True, liger_model_types=frozenset({"llama", "qwen2"})
)


@pytest.fixture(scope="module")
def llama() -> PretrainedConfig:
    return AutoConfig.from_pretrained(TINY_MODEL_DIR)


def _chosen(paths: list[FastPath]) -> dict[str, tuple[str, str]]:
    return {p.name: (p.chosen, p.reason) for p in paths}


def test_specs_that_sent_a_bool_still_read() -> None:
    # Stored specs and API clients from before the switches had auto sent booleans (the form: "true"/"false").
    old = run_spec(packing=True, gradient_checkpointing=False)
    assert (old.packing, old.gradient_checkpointing) == ("on", "off")
    assert run_spec(packing="false", gradient_checkpointing="true").gradient_checkpointing == "on"
    fresh = run_spec()
    assert (fresh.packing, fresh.gradient_checkpointing, fresh.liger_kernel, fresh.torch_compile) == ("auto",) * 4
    # A stored DPO spec held packing false; sft alone packs, but "off" asks for nothing and still reads.
    stored = run_spec(objective="dpo", method="lora", dataset=str(SAMPLE_PAIRS), packing=False).model_dump(mode="json")
    assert RunSpec.model_validate(stored).packing == "off"
    # "Duplicate" of such a run: the form shows what it asked, not the first choice (auto).
    shown = {
        f.name: f.value
        for f in build_fields(stored | {"objective": "sft", "packing": False, "gradient_checkpointing": True})
    }
    assert (shown["packing"], shown["gradient_checkpointing"], shown["liger_kernel"]) == ("off", "on", "auto")
    with pytest.raises(ValueError, match="packing: only for objective sft"):
        run_spec(objective="dpo", method="lora", dataset=str(SAMPLE_PAIRS), packing="on")
    with pytest.raises(ValueError, match="packing: not with method prompt_tuning"):
        run_spec(method="prompt_tuning", quantization="none", packing="on")


def test_auto_on_the_cpu_packs_and_leaves_the_gpu_paths_off_saying_why(llama: PretrainedConfig) -> None:
    chosen = _chosen(resolve(run_spec(), llama, CPU))
    assert chosen["packing"][0] == "on" and "padded batch's loss" in chosen["packing"][1]
    assert chosen["gradient_checkpointing"] == ("off", "no GPU memory to save on the CPU")
    assert chosen["liger_kernel"][0] == "off" and "no CUDA GPU" in chosen["liger_kernel"][1]
    assert chosen["torch_compile"][0] == "off" and "not yet measured faster" in chosen["torch_compile"][1]


def test_liger_auto_falls_back_with_the_reason(llama: PretrainedConfig) -> None:
    def liger(facts: DeviceFacts, config: PretrainedConfig = llama) -> tuple[str, str]:
        return _chosen(resolve(run_spec(), config, facts))["liger_kernel"]

    assert liger(GPU_WITHOUT_TRITON) == ("off", "Triton is not installed (Liger's kernels are written in it)")
    chosen, reason = liger(GPU_WITHOUT_LIGER)
    assert chosen == "off" and "liger-kernel is not installed" in reason and "pip install" in reason
    gpt2 = AutoConfig.for_model("gpt2")
    assert liger(GPU_WITH_LIGER, gpt2) == ("off", "liger-kernel does not cover the architecture gpt2")
    chosen, reason = liger(GPU_WITH_LIGER)  # it could run: off until its losses are checked on a GPU, and said so
    assert chosen == "off" and "cover llama" in reason and "not yet checked" in reason and "set on" in reason
    dpo = run_spec(objective="dpo", method="lora", dataset=str(SAMPLE_PAIRS))
    assert _chosen(resolve(dpo, llama, GPU_WITH_LIGER))["liger_kernel"][0] == "off"  # TRL swaps DPO's loss
    assert _chosen(resolve(dpo.model_copy(update={"liger_kernel": "on"}), llama, GPU_WITH_LIGER))["liger_kernel"] == (
        "on",
        "set on in the spec",
    )


def test_liger_on_where_it_cannot_apply_fails_naming_the_field(llama: PretrainedConfig) -> None:
    for facts, why in ((CPU, "no CUDA GPU"), (GPU_WITHOUT_TRITON, "Triton"), (GPU_WITHOUT_LIGER, "pip install")):
        with pytest.raises(RunError, match=f"liger_kernel: on, but .*{why}.*set liger_kernel to auto or off"):
            resolve(run_spec(liger_kernel="on"), llama, facts)
    assert _chosen(resolve(run_spec(liger_kernel="off"), llama, GPU_WITH_LIGER))["liger_kernel"][0] == "off"


def test_gradient_checkpointing_auto_follows_the_estimate_against_free_memory(llama: PretrainedConfig) -> None:
    gpu = DeviceFacts(cuda=True, free_memory_bytes=10 * GIB)
    weighed: list[RunSpec] = []

    def needs(total: int) -> Any:
        def estimate(spec: RunSpec) -> int:
            weighed.append(spec)
            return total

        return estimate

    passes = run_spec(micro_batch_size=8)  # passes as set: weighed at the batch as set
    fits = _chosen(resolve(passes, llama, gpu, needs(6 * GIB)))["gradient_checkpointing"]
    assert fits == ("off", "the estimate (6.0 GiB) fits the GPU's 10.0 GiB free without it")
    short = _chosen(resolve(passes, llama, gpu, needs(9 * GIB)))["gradient_checkpointing"]
    assert short == ("on", "the estimate without it (9.0 GiB) exceeds 85% of the GPU's 10.0 GiB free")
    assert {s.gradient_checkpointing for s in weighed} == {"off"}  # the estimate weighed is the one without it
    # An explicit choice is honoured without estimating.
    weighed.clear()
    assert _chosen(resolve(run_spec(gradient_checkpointing="on"), llama, CPU))["gradient_checkpointing"][0] == "on"
    assert _chosen(resolve(run_spec(gradient_checkpointing="off", micro_batch_size=8), llama, gpu, needs(99 * GIB)))[
        "gradient_checkpointing"
    ] == ("off", "set off in the spec")
    assert not weighed


def test_micro_batch_auto_fits_the_passes_to_the_gpu_and_checkpoints_only_if_one_example_overflows(
    llama: PretrainedConfig,
) -> None:
    gpu = DeviceFacts(cuda=True, free_memory_bytes=10 * GIB)  # 8.5 GiB of it for the estimate

    def needs(fixed: float, per_example: float) -> Any:
        def estimate(spec: RunSpec) -> int:  # activations a quarter with checkpointing
            share = 0.25 if spec.gradient_checkpointing == "on" else 1.0
            return int((fixed + spec.per_device_train_batch_size * per_example * share) * GIB)

        return estimate

    step = run_spec(per_device_train_batch_size=8, gradient_accumulation_steps=2)  # 16 examples a step
    roomy = _chosen(resolve(step, llama, gpu, needs(2, 1)))
    assert roomy["gradient_checkpointing"][0] == "off"  # one example a pass fits without it
    assert roomy["micro_batch_size"] == ("4", "the largest pass that fits the GPU: 4 of 16 examples (4 passes a step)")
    trains = applied(step, resolve(step, llama, gpu, needs(2, 1)))
    assert (trains.per_device_train_batch_size, trains.gradient_accumulation_steps) == (4, 4)
    tight = _chosen(resolve(step, llama, gpu, needs(2, 7)))  # one example: 9 GiB without checkpointing
    assert tight["gradient_checkpointing"][0] == "on"
    assert tight["micro_batch_size"][0] == "2"  # 2 + 1.75 x 2 fits, 4 passes of 4 would not
    # The CPU keeps the batch as set; a number is used as it is; GRPO generates a batch as set at a time.
    assert _chosen(resolve(step, llama, CPU))["micro_batch_size"] == ("8", "on the CPU: the batch as set (8 x 2)")
    explicit = run_spec(per_device_train_batch_size=8, gradient_accumulation_steps=2, micro_batch_size=16)
    assert applied(explicit, resolve(explicit, llama, gpu, needs(2, 1))).gradient_accumulation_steps == 1
    with pytest.raises(ValueError, match="micro_batch_size: 3 does not divide the 16 examples"):
        run_spec(per_device_train_batch_size=8, gradient_accumulation_steps=2, micro_batch_size=3)
    # A number is what checkpointing auto weighs: 16 a pass overflows without it, where the batch's 8 would not.
    sixteen = explicit.model_copy(update={"gradient_checkpointing": "auto"})
    assert _chosen(resolve(sixteen, llama, gpu, needs(2, 0.5)))["gradient_checkpointing"][0] == "on"
    assert (
        _chosen(resolve(sixteen.model_copy(update={"micro_batch_size": 8}), llama, gpu, needs(2, 0.5)))[
            "gradient_checkpointing"
        ][0]
        == "off"
    )
    # KTO pairs the rows of a pass in its KL term: its passes stay the batch as set, and a number is refused.
    kto = run_spec(objective="kto", method="lora", dataset=str(SAMPLE_PAIRS), per_device_train_batch_size=4)
    assert _chosen(resolve(kto, llama, gpu, needs(2, 1)))["micro_batch_size"][0] == "4"
    with pytest.raises(ValueError, match="micro_batch_size: objective kto pairs the rows"):
        run_spec(objective="kto", method="lora", dataset=str(SAMPLE_PAIRS), per_device_train_batch_size=4,
                 micro_batch_size=2)  # fmt: skip
    assert run_spec(micro_batch_size="").micro_batch_size == "auto"  # the form's empty box
    with pytest.raises(ValueError, match="micro_batch_size: 'Four' is not a number of examples"):
        run_spec(micro_batch_size="Four")


def test_packing_auto_stays_off_where_it_is_not_loss_equal(llama: PretrainedConfig) -> None:
    prompt_tuning = _chosen(resolve(run_spec(method="prompt_tuning", quantization="none"), llama, CPU))["packing"]
    assert prompt_tuning == ("off", "prompt tuning's virtual tokens drop the position ids packing needs")
    dpo = _chosen(resolve(run_spec(objective="dpo", method="lora", dataset=str(SAMPLE_PAIRS)), llama, CPU))["packing"]
    assert dpo[0] == "off" and "objective dpo" in dpo[1]
    unchecked = _chosen(resolve(run_spec(), AutoConfig.for_model("gpt2"), CPU))["packing"]
    assert unchecked[0] == "off" and "not gpt2" in unchecked[1] and "set on to pack anyway" in unchecked[1]
    assert _chosen(resolve(run_spec(packing="on"), AutoConfig.for_model("gpt2"), CPU))["packing"][0] == "on"
    assert _chosen(resolve(run_spec(packing="off"), llama, CPU))["packing"] == ("off", "set off in the spec")


def test_each_switch_reaches_what_trains(tmp_path: Path, llama: PretrainedConfig) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    for value in ("on", "off"):
        spec = applied(
            run_spec(),
            [{"name": n, "asked": value, "chosen": value, "reason": ""} for n in ("packing", "torch_compile")],
        )
        spec = spec.model_copy(update={"gradient_checkpointing": value, "liger_kernel": value})
        args = training_arguments(spec, tmp_path)
        on = value == "on"
        assert args.gradient_checkpointing is on and args.use_liger_kernel is on and args.torch_compile is on
        assert args.gradient_checkpointing_kwargs == ({"use_reentrant": False} if on else None)
        assert isinstance(make_collator(spec, tokenizer), PackedRowsCollator if on else PadCollator)
    # auto unresolved (a spec that skipped worker.engine.fastpaths) is the plain path, never a fast one by accident.
    args = training_arguments(run_spec(), tmp_path)
    assert not (args.gradient_checkpointing or args.use_liger_kernel or args.torch_compile)
    assert isinstance(make_collator(run_spec(), tokenizer), PadCollator)


@pytest.mark.parametrize("family", sorted(PACKING_CHECKED))
def test_packed_rows_give_the_padded_loss_on_each_architecture_auto_packs(family: str) -> None:
    # What PACKING_CHECKED claims: on each of these families the packed batch's loss is the padded batch's.
    spec = FAMILIES[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        spec.config(**SIZES, **spec.overrides, pad_token_id=0, bos_token_id=1, eos_token_id=2), dtype=torch.float32
    ).eval()
    model.config.use_cache = False
    generator = torch.Generator().manual_seed(1)
    examples = []
    for length in (24, 7, 9, 11, 5):
        ids = torch.randint(3, SIZES["vocab_size"], (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": ids})
    packed, padded = PackedRowsCollator(pad_token_id=0)(examples), PadCollator(pad_token_id=0)(examples)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # examples really share rows
    # The control: the same packed rows with an all-ones attention mask let examples see each other.
    leaky = packed | {"attention_mask": torch.ones_like(packed["input_ids"])}
    with torch.no_grad():
        losses = [float(model(**batch).loss) for batch in (packed, padded, leaky)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert abs(losses[2] - losses[1]) > 1e-4  # so a mask that leaked would show


def test_a_run_records_its_fast_paths_and_trains_with_them(loradeck_env: dict[str, str]) -> None:
    from worker.engine.train import run_training

    run_id = create_run(method="lora", max_steps=2, per_device_train_batch_size=4, save_steps=0, eval_steps=0)
    run_training(run_id)
    run = read_run(run_id)
    assert run.status == RunStatus.succeeded, run.error
    assert [p.step for p in train_points(run_id)] == [1, 2]
    recorded = {p["name"]: p for p in run.fast_paths or []}
    assert list(recorded) == ["packing", "micro_batch_size", "gradient_checkpointing", "liger_kernel", "torch_compile"]
    assert recorded["micro_batch_size"]["chosen"] == "4"  # the CPU: the batch as set
    assert recorded["packing"] | {"reason": ""} == {"name": "packing", "asked": "auto", "chosen": "on", "reason": ""}
    assert recorded["gradient_checkpointing"]["reason"] == "no GPU memory to save on the CPU"
    assert recorded["liger_kernel"]["chosen"] == "off" and "no CUDA GPU" in recorded["liger_kernel"]["reason"]
    # What GET /api/v1/runs/{id} answers.
    assert [p.model_dump() for p in RunOut.model_validate(run).fast_paths or []] == run.fast_paths
    # The stored spec stays what the user asked for.
    assert run.spec["packing"] == "auto"
    log = RunDir.of(run_id).log_file.read_text(encoding="utf-8")
    assert "fast path packing: auto -> on" in log


def test_liger_on_without_a_gpu_fails_the_run_at_once_naming_the_field(loradeck_env: dict[str, str]) -> None:
    from worker.engine.train import run_training

    run_id = create_run(method="lora", max_steps=2, liger_kernel="on", save_steps=0)
    run_training(run_id)
    run = read_run(run_id)
    assert run.status == RunStatus.failed
    assert (
        run.error and run.error.startswith("liger_kernel: on, but") and "set liger_kernel to auto or off" in run.error
    )
    assert train_points(run_id) == []
