"""Every family people fine-tune, proven on a tiny random-weight model of its real shape (tests/worker/families.py):
Llama 3, Qwen2 (q/k/v biases, tied embeddings), Qwen3, Mistral, Gemma 2 (tied and scaled embeddings,
soft-capping), Phi-3 (fused qkv_proj and gate_up_proj).

For each: the pre-flight estimate equals PEFT's count on the instantiated model, or refuses where PEFT refuses,
naming the field; a `messages` row is masked as the README documents, token by token, against the family's
format; LoRA and QLoRA runs train, evaluate, merge (checked against adapter-on-base, loaded by stock
transformers) and answer in the playground; the streaming merge equals adapter-on-base for every method,
including the tied-embedding cases where PEFT's own merge_and_unload is wrong (its error is recorded).

With LORADECK_FAMILY_RESULTS=<path>, the module writes what it measured there as JSON;
`python -m scripts.family_table` turns bench/results/families.json into the README's table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from peft import IA3Config, LoraConfig, PeftConfig, PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from app import playground, runs
from app.config import get_settings
from app.db import get_sessionmaker
from app.models import ArtifactStatus, RunStatus
from app.peft_defaults import IA3_DEFAULT_MODEL_TYPES
from app.schemas import RunSpec
from tests.worker.families import CORPUS, FAMILIES, build_family
from worker.data.chat import IGNORE_INDEX
from worker.data.encode import DatasetError, load_training_data
from worker.engine.estimate import answer_estimate
from worker.engine.train import run_training
from worker.merge.artifact import merge_artifact
from worker.merge.streaming import merge_adapter_streaming
from worker.serving.generate import run_playground

PARITY = 1e-4  # fp32 logits, merged vs adapter-on-base: only summation order may differ
NAMES = list(FAMILIES)
RESULTS: dict[str, dict[str, Any]] = {name: {} for name in NAMES}


@pytest.fixture(scope="module", autouse=True)
def record_results() -> Iterator[None]:
    yield
    target = os.environ.get("LORADECK_FAMILY_RESULTS")
    if target:
        Path(target).write_text(json.dumps(RESULTS, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / name) for name in NAMES}


def _conversation(index: int, *, system: bool, turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "Answer briefly."}] if system else []
    for turn in range(turns):
        question, answer = CORPUS[(index + turn) % len(CORPUS)].split(" ", 1)[0], CORPUS[(index + turn + 3) % 8]
        messages += [{"role": "user", "content": f"Say {question}"}, {"role": "assistant", "content": answer}]
    return messages


def _turns(family: str) -> int:
    # Qwen3's own template drops an earlier answer's think block once a later turn follows, so the
    # conversation's tokens are not a prefix of themselves: loradeck refuses those rows (tested below).
    return 1 if family == "qwen3" else 2


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per family, 4 `messages` rows (a system turn where the family has that role)."""
    root = tmp_path_factory.mktemp("chat")
    paths = {}
    for name, family in FAMILIES.items():
        path = root / f"{name}.jsonl"
        rows = [{"messages": _conversation(i, system=family.system_role, turns=_turns(name))} for i in range(4)]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        paths[name] = path
    return paths


# --- the pre-flight estimate against PEFT on the instantiated model

LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
METHODS: dict[str, tuple[dict[str, Any], Callable[[], PeftConfig]]] = {  # RunSpec fields, PEFT's own config
    "lora": ({"method": "lora"}, lambda: LoraConfig(**LORA)),
    "dora": ({"method": "lora", "use_dora": True}, lambda: LoraConfig(**LORA, use_dora=True)),
    "modules_to_save": (
        {"method": "lora", "modules_to_save": ["lm_head"]},
        lambda: LoraConfig(**LORA, modules_to_save=["lm_head"]),
    ),
    "ia3": ({"method": "ia3"}, lambda: IA3Config(task_type="CAUSAL_LM")),  # PEFT's defaults for the architecture
    "prompt_tuning": (
        {"method": "prompt_tuning", "num_virtual_tokens": 16},
        lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=16),
    ),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", NAMES)
def test_estimate_equals_peft_or_refuses_where_peft_does(
    family: str, method: str, family_dirs: dict[str, Path], chat_data: dict[str, Path]
) -> None:
    fields, make_config = METHODS[method]
    model = AutoModelForCausalLM.from_pretrained(family_dirs[family], dtype=torch.float32)
    raw = {"base_model": str(family_dirs[family]), "dataset": str(chat_data[family]), "precision": "fp32", **fields}
    answer = answer_estimate(raw, enforce_roots=False).model_dump()
    try:
        peft_model = get_peft_model(model, make_config())
    except ValueError as exc:  # PEFT refuses: so must the estimate, before anything is queued
        assert not answer["ok"], f"PEFT refuses ({exc}) but the estimate answered"
        field = "feedforward_modules"
        assert answer["error"].startswith(f"{field}: "), answer["error"]
        # PEFT's IA3Config() without target_modules stops at those first; with them, at feedforward_modules.
        assert "Please specify `target_modules`" in str(exc) or "Please specify `feedforward_modules`" in str(exc)
        RESULTS[family][f"estimate/{method}"] = f"refused: {field}"
        return
    assert answer["ok"], answer.get("error")
    trainable, total = peft_model.get_nb_trainable_parameters()
    params = answer["estimate"]["params"]
    assert (params["trainable"], params["all"]) == (trainable, total)
    RESULTS[family][f"estimate/{method}"] = trainable


ATTENTION = {"phi3": "o_proj, qkv_proj"}  # fused, in the model's order; the rest: q, k, v, o


@pytest.mark.parametrize("family", NAMES)
def test_target_module_choices_are_the_familys_own_names_and_estimate(
    family: str, family_dirs: dict[str, Path], chat_data: dict[str, Path]
) -> None:
    raw = {"base_model": str(family_dirs[family]), "dataset": str(chat_data[family]), "method": "lora"}
    choices = answer_estimate(raw, enforce_roots=False).model_dump()["estimate"]["model"]["target_choices"]
    assert choices["attention only"] == ATTENTION.get(family, "q_proj, k_proj, v_proj, o_proj")
    assert choices["all linear"] == "all-linear"
    assert choices["with embeddings"].endswith(", embed_tokens, lm_head")
    model = AutoModelForCausalLM.from_pretrained(family_dirs[family], dtype=torch.float32)
    config = LoraConfig(**{**LORA, "target_modules": choices["with embeddings"].split(", ")})
    expected = get_peft_model(model, config).get_nb_trainable_parameters()
    answer = answer_estimate(raw | {"target_modules": choices["with embeddings"]}, enforce_roots=False).model_dump()
    assert (answer["estimate"]["params"]["trainable"], answer["estimate"]["params"]["all"]) == expected


def test_the_web_knows_which_architectures_peft_has_ia3_defaults_for() -> None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD

    assert set(FEEDFORWARD) == IA3_DEFAULT_MODEL_TYPES  # app/peft_defaults.py's copy, for the PEFT installed
    assert {"llama", "qwen2", "qwen3", "mistral", "gemma2"} <= IA3_DEFAULT_MODEL_TYPES
    assert "phi3" not in IA3_DEFAULT_MODEL_TYPES


def test_phi3_ia3_runs_once_its_feedforward_modules_are_named(
    family_dirs: dict[str, Path], chat_data: dict[str, Path]
) -> None:
    fields = {"method": "ia3", "target_modules": "qkv_proj,down_proj", "feedforward_modules": "down_proj"}
    raw = {"base_model": str(family_dirs["phi3"]), "dataset": str(chat_data["phi3"]), **fields}
    answer = answer_estimate(raw, enforce_roots=False).model_dump()
    model = AutoModelForCausalLM.from_pretrained(family_dirs["phi3"], dtype=torch.float32)
    config = IA3Config(
        task_type="CAUSAL_LM", target_modules=["qkv_proj", "down_proj"], feedforward_modules=["down_proj"]
    )
    assert answer["ok"], answer.get("error")
    assert answer["estimate"]["params"]["trainable"] == get_peft_model(model, config).get_nb_trainable_parameters()[0]


# --- the loss mask of a messages row, token by token


def _expected(family: str, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The family's format written out by hand: (text, trained) pieces. Trained: each answer and the token
    that closes it, from where the model starts generating (README: `train_on_prompt`)."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = [m["content"] for m in messages if m["role"] != "system"]
    pairs = list(zip(turns[::2], turns[1::2], strict=True))
    pieces: list[tuple[str, bool]] = []
    if family == "llama":
        header = "<|start_header_id|>{}<|end_header_id|>\n\n".format
        head = "<|begin_of_text|>" + (f"{header('system')}{system}<|eot_id|>" if system else "")
        for q, a in pairs:
            pieces += [(f"{head}{header('user')}{q}<|eot_id|>{header('assistant')}", False), (f"{a}<|eot_id|>", True)]
            head = ""
    elif family in ("qwen2", "qwen3"):
        default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." if family == "qwen2" else None
        sys_text = system or default
        head = f"<|im_start|>system\n{sys_text}<|im_end|>\n" if sys_text else ""
        think = "<think>\n\n</think>\n\n" if family == "qwen3" else ""
        for q, a in pairs:
            pieces += [
                (f"{head}<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", False),
                (f"{think}{a}<|im_end|>", True),
            ]
            head = "\n"
        pieces.append(("\n", False))
    elif family == "mistral":
        head = "<s>"
        for q, a in pairs:
            pieces += [(f"{head}[INST] {q} [/INST]", False), (f" {a}</s>", True)]
            head = ""
    elif family == "gemma2":
        head = "<bos>"
        for q, a in pairs:
            pieces += [
                (f"{head}<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n", False),
                (f"{a}<end_of_turn>", True),
            ]
            head = "\n"
        pieces.append(("\n", False))
    elif family == "phi3":
        head = f"<|system|>\n{system}<|end|>\n" if system else ""
        for q, a in pairs:
            pieces += [(f"{head}<|user|>\n{q}<|end|>\n<|assistant|>\n", False), (f"{a}<|end|>", True)]
            head = "\n"
        pieces.append(("\n<|endoftext|>", False))  # Phi-3 closes the whole conversation with eos
    return pieces


@pytest.mark.parametrize("family", NAMES)
def test_a_messages_row_trains_only_the_answers_in_the_familys_format(
    family: str, family_dirs: dict[str, Path], chat_data: dict[str, Path]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(family_dirs[family])
    spec = RunSpec(base_model=str(family_dirs[family]), dataset=str(chat_data[family]), max_seq_length=512)
    train_data, _ = load_training_data(spec, tokenizer)
    messages = json.loads(chat_data[family].read_text().splitlines()[0])["messages"]
    pieces = _expected(family, messages)

    ids: list[int] = []
    labels: list[int] = []
    for text, trained in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    whole = "".join(text for text, _ in pieces)
    assert ids == tokenizer(whole, add_special_tokens=False)["input_ids"]  # the pieces tokenize as the whole
    example = train_data[0]
    assert example["input_ids"] == ids, tokenizer.decode(example["input_ids"])
    assert example["labels"] == labels, tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    RESULTS[family]["mask"] = f"{sum(label != IGNORE_INDEX for label in labels)} of {len(ids)} tokens trained"


def test_qwen3_multi_turn_rows_need_chatml(family_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    path.write_text(json.dumps({"messages": _conversation(0, system=True, turns=2)}) + "\n", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(family_dirs["qwen3"])
    spec = RunSpec(base_model=str(family_dirs["qwen3"]), dataset=str(path))
    with pytest.raises(DatasetError, match="set chat_template to chatml"):
        load_training_data(spec, tokenizer)
    chatml = spec.model_copy(update={"chat_template": "chatml"})
    example = load_training_data(chatml, tokenizer)[0][0]
    trained = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    assert trained.count("<|im_end|>") == 2 and "<think>" not in trained


# --- the streaming merge against adapter-on-base, and PEFT's own merge beside it


def _ids(vocab: int = 400) -> torch.Tensor:
    return torch.randint(20, vocab, (2, 24), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits.float()


def _load(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _trained_like(base: Path, config: PeftConfig, out: Path) -> Path:
    """An adapter with every trainable tensor moved off its init by a seeded amount, as training leaves it."""
    model = get_peft_model(_load(base), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator)
                if "lora_" in name and "magnitude" not in name:
                    param.copy_(noise * 0.05)
                else:  # (IA)³ vectors, DoRA magnitudes, modules_to_save copies: scaled
                    param.mul_(1 + 0.1 * noise)
    model.save_pretrained(str(out))
    return out


def _ia3(family: str) -> IA3Config:
    if family == "phi3":  # PEFT has no defaults for it: the named modules of the (IA)³ paper's choice
        return IA3Config(target_modules=["qkv_proj", "down_proj"], feedforward_modules=["down_proj"])
    return IA3Config()


MERGES: dict[str, Callable[[str], PeftConfig]] = {
    "lora": lambda family: LoraConfig(r=8, target_modules="all-linear"),
    "dora": lambda family: LoraConfig(r=4, target_modules="all-linear", use_dora=True),
    "ia3": _ia3,
    "lm_head": lambda family: LoraConfig(r=4, target_modules=["lm_head"]),
    "embed_tokens": lambda family: LoraConfig(r=4, target_modules=["embed_tokens"]),
    "modules_to_save": lambda family: LoraConfig(r=4, target_modules=["o_proj"], modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("method", list(MERGES))
@pytest.mark.parametrize("family", NAMES)
def test_streaming_merge_equals_adapter_on_base(
    family: str, method: str, family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    base = family_dirs[family]
    adapter = _trained_like(base, MERGES[method](family), tmp_path / "adapter")
    summary = merge_adapter_streaming(base, adapter, tmp_path / "merged")

    ids = _ids()
    with_adapter = PeftModel.from_pretrained(_load(base), str(adapter))
    reference = _logits(with_adapter, ids)
    peft_diff = float((_logits(with_adapter.merge_and_unload(), ids) - reference).abs().max())
    merged = _load(tmp_path / "merged")  # stock transformers, nothing of loradeck's
    ours = float((_logits(merged, ids) - reference).abs().max())
    RESULTS[family][f"merge/{method}"] = {"loradeck": ours, "peft": peft_diff}
    print(f"{family} {method}: merged vs adapter-on-base {ours:.2g}; PEFT merge_and_unload {peft_diff:.2g}")

    assert ours < PARITY
    assert float((_logits(_load(base), ids) - reference).abs().max()) > 1e-3  # the adapter does something
    head_or_embedding = method in ("lm_head", "embed_tokens", "modules_to_save")
    untied = FAMILIES[family].tied and head_or_embedding
    assert summary["untied_embeddings"] is untied
    shared = merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    assert shared is (FAMILIES[family].tied and not untied)
    if not FAMILIES[family].tied:
        assert peft_diff < PARITY  # PEFT agrees where nothing is tied


# --- real runs: LoRA and QLoRA train, evaluate, merge and answer in the playground


def _run(method: str, base: Path, dataset: Path, **overrides: Any) -> str:
    spec = RunSpec(
        base_model=str(base),
        dataset=str(dataset),
        method=method,
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=2e-2,
        lora_dropout=0.0,
        max_seq_length=256,
        save_steps=0,
        regression_prompts=["Count to five."],
        eval_max_new_tokens=6,
        **overrides,
    )
    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=spec).id
    run_training(run_id)
    return run_id


def _playground(run_id: str, compare: str) -> list[dict[str, Any]]:
    generation_id = playground.new_generation_id()
    payload = {"run_id": run_id, "prompt": "Count to five.", "compare": compare, "max_new_tokens": 6}
    run_playground(generation_id, payload)
    client = redis.Redis.from_url(get_settings().redis_url)
    entries = client.xrange(playground.stream_key(generation_id))
    return [{"event": f[b"event"].decode(), "data": json.loads(f[b"data"])} for _, f in entries]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("family", NAMES)
def test_lora_and_qlora_train_evaluate_merge_and_generate(
    family: str,
    method: str,
    family_dirs: dict[str, Path],
    chat_data: dict[str, Path],
    loradeck_env: dict[str, str],
) -> None:
    run_id = _run(method, family_dirs[family], chat_data[family])
    with get_sessionmaker()() as session:
        run = runs.get_run(session=session, run_id=run_id)
        losses = [p.loss for p in runs.list_metrics(session=session, run_id=run_id) if p.kind == "train"]
        artifact, _ = runs.request_merge(session=session, run_id=run_id, dtype="float32")
    assert run.status == RunStatus.succeeded, run.error
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    evaluation = run.evaluation or {}
    assert "error" not in evaluation, evaluation
    assert [set(row) for row in evaluation["regression"]] == [{"prompt", "base", "adapter"}]

    merge_artifact(artifact.id)
    with get_sessionmaker()() as session:
        merged = runs.get_artifact(session=session, artifact_id=artifact.id)
    assert merged.status == ArtifactStatus.ready, merged.error
    assert merged.details["max_abs_diff"] < PARITY  # checked by worker.merge.artifact against adapter-on-base, in fp32
    card = (get_settings().runs_dir / run_id / "merged" / "README.md").read_text()
    assert "untied" not in card  # all-linear leaves lm_head and the embeddings alone
    assert merged.details["untied_embeddings"] is False

    events = _playground(run_id, "merged")
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done", events
    assert len(events[-1]["data"]["texts"]) == 2
    RESULTS[family][f"train/{method}"] = {
        "first_loss": round(losses[0], 3),
        "last_loss": round(losses[-1], 3),
        "merge_diff": merged.details["max_abs_diff"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("family", [name for name, family in FAMILIES.items() if family.tied])
def test_a_tied_model_trained_through_its_head_merges_untied_and_says_so(
    family: str, family_dirs: dict[str, Path], chat_data: dict[str, Path], loradeck_env: dict[str, str]
) -> None:
    base = family_dirs[family]
    run_id = _run("lora", base, chat_data[family], target_modules=["q_proj", "lm_head"])
    with get_sessionmaker()() as session:
        artifact, _ = runs.request_merge(session=session, run_id=run_id, dtype="float32")
    merge_artifact(artifact.id)
    with get_sessionmaker()() as session:
        merged = runs.get_artifact(session=session, artifact_id=artifact.id)
    assert merged.status == ArtifactStatus.ready, merged.error
    assert merged.details["untied_embeddings"] is True
    merged_dir = get_settings().runs_dir / run_id / "merged"
    assert "the merge untied the embeddings" in (merged_dir / "README.md").read_text()
    assert json.loads((merged_dir / "config.json").read_text())["tie_word_embeddings"] is False

    # PEFT's own merge of the same trained adapter, against the same reference, for the README's table.
    ids = _ids()
    with_adapter = PeftModel.from_pretrained(_load(base), str(get_settings().runs_dir / run_id / "adapter"))
    reference = _logits(with_adapter, ids)
    peft_diff = float((_logits(with_adapter.merge_and_unload(), ids) - reference).abs().max())
    ours = float((_logits(_load(merged_dir), ids) - reference).abs().max())
    print(f"{family} trained lm_head LoRA: merged vs adapter-on-base {ours:.2g}; PEFT merge_and_unload {peft_diff:.2g}")
    assert ours < PARITY and merged.details["max_abs_diff"] < PARITY
    assert peft_diff > 100 * PARITY  # PEFT's merge changes the tied embedding too: the reason for ours
    RESULTS[family]["train/lora lm_head"] = {"loradeck": ours, "peft": peft_diff}
