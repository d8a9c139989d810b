"""GGUF export: wall time and peak memory against model size, and the check that proves each file.

    .venv/bin/python bench/gguf.py [--types f16,q8_0,q4_k_m] [--skip-large] [--keep DIR]

Two models: the bundled tiny-llama (2.85M parameters, fp32) and a random Llama of the merge benchmark's
shapes (~498M parameters) written as bf16 safetensors shards, as loradeck's merge writes a merged model,
with the bundled tokenizer. Each export and each check runs in a fresh Python process (imports included).
The conversion itself runs in a child of that process (worker/export/_gguf_driver.py), which reports its
own peak RSS; the table gives that figure beside the model's size on disk, which is the question: the
model is never in memory twice. The baseline, run in the same invocation on the same files: a fresh process
that imports torch and safetensors and reads every tensor once (what any export must at least do); the table
gives the export's wall time and peak RSS as ratios of that read's. Results go to bench/results/gguf.json and
the `gguf` section of bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# This file is named gguf.py: with its folder first on sys.path, `import gguf` would find it, not the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.common import update_readme_section, write_result  # noqa: E402
from bench.merge import MODEL as MERGE_MODEL  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "assets" / "tiny-llama"
EVAL_ROWS = REPO / "assets" / "datasets" / "tw-address" / "eval.jsonl"
LARGE = MERGE_MODEL  # the merge benchmark's random Llama, ~498M parameters
SHARD = "300MB"
CHECK_PROMPTS = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_large(root: Path) -> Path:
    """The random Llama as bf16 shards with the bundled tokenizer (its 2769 tokens padded to 32000 rows)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = root / "random-llama-498m"
    if out.is_dir():  # whole: it is written beside and renamed into place when complete
        return out
    partial = root / "random-llama-498m.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted build left
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LARGE, bos_token_id=1, eos_token_id=2, pad_token_id=0)).bfloat16()
    model.save_pretrained(partial, max_shard_size=SHARD)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TINY / name, partial / name)
    partial.rename(out)
    return out


def _model_size(model_dir: Path) -> tuple[int, int]:
    from safetensors import safe_open

    params = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shape = handle.get_slice(name).get_shape()
                params += math.prod(shape)
    return params, sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def child(mode: str, *args: str) -> dict[str, Any]:
    """One step in a fresh interpreter: what it printed last, its wall and CPU time, and its peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, mode, *args], stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{mode} {args} failed")
    return json.loads(output.decode().strip().splitlines()[-1]) | {
        "wall_s": round(time.perf_counter() - started, 2),
        "process_peak_rss_bytes": usage.ru_maxrss * 1024,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }


def _prompts(*, completions: bool) -> list[str]:
    """Eval rows: whole (logits are compared at every position) or, for a greedy check, the prompts alone."""
    rows = [json.loads(line) for line in EVAL_ROWS.read_text(encoding="utf-8").splitlines()[:CHECK_PROMPTS]]
    return [row["prompt"] + (row["completion"] if completions else "") for row in rows]


def run_read(model_dir: str) -> dict[str, Any]:
    """The baseline: every tensor of the model read once, shard by shard (torch and safetensors imported)."""
    import torch  # noqa: F401  (the converter imports it too: the same fixed cost on both sides)
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                total += handle.get_tensor(name).numel()
    return {"values": total}


def run_export(model_dir: str, out: str, gguf_type: str) -> dict[str, Any]:
    from worker.export import convert_to_gguf

    return convert_to_gguf(Path(model_dir), Path(out), gguf_type)  # write_result records its path by name


def run_check(gguf_path: str, model_dir: str, gguf_type: str) -> dict[str, Any]:
    from worker.export import check_gguf
    from worker.export.gguf_check import TOLERANCES

    prompts = _prompts(completions=gguf_type in TOLERANCES)
    result = check_gguf(Path(gguf_path), Path(model_dir), prompts, gguf_type)
    result["tokens"] = sum(entry["same"] for entry in result["tokens"])
    return result


def _verdict(check: dict[str, Any]) -> str:
    if "tolerance" in check:
        figure = f"rel {check['max_rel_logit_diff']:.3g} ≤ {check['tolerance']} (abs {check['max_abs_logit_diff']:.3g})"
    else:
        figure = (
            f"greedy {check['greedy_agreement']:.3f} ≥ {check['threshold']} (rel {check['max_rel_logit_diff']:.2f})"
        )
    return figure + (", pass" if check["passed"] else ", FAIL")


def table(rows: list[dict[str, Any]]) -> str:
    mib = 1024**2
    lines = [
        "| model | safetensors | type | .gguf | export wall (÷ read) | converter peak RSS (÷ read; ÷ model) | "
        "check wall (÷ read) | check peak RSS (÷ fp32 model) | check |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        export, check, read = row["export"], row["check"], row["read"]
        lines.append(
            f"| {row['model']} ({row['parameters'] / 1e6:.1f}M) | {row['safetensors_bytes'] / mib:.0f} MiB | "
            f"{row['gguf_type']} | {export['bytes'] / mib:.1f} MiB | {export['wall_s']:.1f} s "
            f"({export['wall_s'] / read['wall_s']:.2f}x) | {export['peak_rss'] / mib:.0f} MiB "
            f"({export['peak_rss'] / read['process_peak_rss_bytes']:.2f}x; "
            f"{export['peak_rss'] / row['safetensors_bytes']:.2f}x) | {check['wall_s']:.1f} s "
            f"({check['wall_s'] / read['wall_s']:.2f}x) | {check['process_peak_rss_bytes'] / mib:.0f} MiB "
            f"({check['process_peak_rss_bytes'] / (4 * row['parameters']):.2f}x) | {_verdict(check)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", default="f16,q8_0,q4_k_m")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--keep", type=Path, help="build (and keep) the random model here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    # The random model is built in a child: a parent holding it would lend its pages to every child it forks,
    # and their peak RSS would count them.
    large = {} if args.skip_large else {"random-llama-498m": Path(child("build", str(root))["path"])}
    models = {"tiny-llama": TINY} | large
    rows: list[dict[str, Any]] = []
    for label, model_dir in models.items():
        params, size = _model_size(model_dir)
        for gguf_type in args.types.split(","):
            out = root / f"{label}-{gguf_type}.gguf"
            read = child("read", str(model_dir))  # the baseline, beside each export (the machine is shared)
            export = child("export", str(model_dir), str(out), gguf_type)
            check = child("check", str(out), str(model_dir), gguf_type)
            rows.append(
                {"model": label, "parameters": params, "safetensors_bytes": size, "gguf_type": gguf_type}
                | {"read": read, "export": export, "check": check}
            )
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            out.unlink()
    if not args.keep:
        shutil.rmtree(root)
    # Where the files were kept is this machine's business, not the record's.
    argv = sys.argv[1:]
    argv = [
        "DIR" if i and argv[i - 1] == "--keep" else re.sub(r"^--keep=.*", "--keep=DIR", a) for i, a in enumerate(argv)
    ]
    command = "python bench/gguf.py " + " ".join(argv)
    write_result("gguf", command.strip(), {"rows": rows, "table": table(rows)})
    update_readme_section("gguf", readme_section(command.strip(), rows))
    print(table(rows))


def readme_section(command: str, rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        [
            "## GGUF export: wall time and peak memory against the model's size",
            "",
            f"`{command}` — recorded in `results/gguf.json`. Each export and each check runs in a fresh process; "
            "the baseline, beside each export, is a fresh process reading every tensor of the same model once "
            "(torch and safetensors imported, as the converter imports them). The converter's peak RSS is its own "
            "(a child of the export); the model is never in memory twice: the tensors are memory-mapped views "
            "converted one at a time. The check runs transformers in fp32 (one copy of the model, freed before "
            "llama.cpp loads the file) against llama.cpp with an fp32 KV cache: its peak RSS is given against the "
            "model's fp32 size (4 bytes a parameter), its wall time against the same baseline read.",
            "",
            table(rows),
            "",
            *_failures_explained(rows),
            "The first build of llama.cpp (`make gguf`) takes 4 to 9 minutes on 2 cores; pip keeps the wheel.",
        ]
    )


def _failures_explained(rows: list[dict[str, Any]]) -> list[str]:
    """What the recorded rows show of a failed check: a 4-bit file of a random model is expected to fail."""
    failed = [row for row in rows if not row["check"].get("passed")]
    if not failed:
        return ["Every check passed.", ""]
    named = ", ".join(f"{row['gguf_type']} of {row['model']}" for row in failed)
    reason = (
        "as it should: a random model's logits are nearly flat, so 4-bit rounding changes its greedy choices, "
        "where a trained model keeps them, as the bundled one does at q4_k_m"
        if all(row["gguf_type"] == "q4_k_m" and row["model"].startswith("random") for row in failed)
        else "see the check column"
    )
    return [f"Failed its check: {named} ({reason}).", ""]


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        print(json.dumps({"path": str(build_large(Path(sys.argv[2])))}))
    elif sys.argv[1:2] == ["read"]:
        print(json.dumps(run_read(sys.argv[2])))
    elif sys.argv[1:2] == ["export"]:
        print(json.dumps(run_export(*sys.argv[2:5])))
    elif sys.argv[1:2] == ["check"]:
        print(json.dumps(run_check(*sys.argv[2:5])))
    else:
        main()
