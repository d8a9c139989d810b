"""Packing: padding-free packed batches against padded ones, both through loradeck's engine, on a dataset of
mixed lengths built here; and on one of uniformly long rows, where there is no padding to save.

    .venv/bin/python bench/packing.py [--repeats 3]

The datasets are prompt/completion rows cut from the tiny model's own corpus (assets/corpus) at seeded
random places, so the model has seen text of the kind: "mixed" rows are 10 to 200 tokens, skewed to the
short end (length 10 + 190·u³, u uniform: median ~34, mean ~57); "long" rows are 180 to 200 tokens. The
spec is the same on both sides but `packing`; each run is a fresh process, the two alternating (AB, BA,
...). Useful tokens are Trainer's non-padding count; tokens/s runs over the steps after the warm-up, read
off the runs' metric points; medians of the repeats. The loss curves are those of the first repeat (the
runs are deterministic on a CPU), compared step by step and smoothed (centred moving mean of 5 steps).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import update_readme_section, write_result  # noqa: E402
from bench.throughput import TINY, Scratch, alternate, spawn, steady_tokens_per_s  # noqa: E402

TARGET = 1.3  # packed useful tokens/s over padded, at least (mixed lengths)
LONG_TARGET = 1.0  # and on uniformly long rows, where there is no padding to save: never slower
WARMUP = 5
SMOOTH = 5
DATASETS = {  # name -> (shortest, longest, skew exponent)
    "mixed": (10, 200, 3.0),
    "long": (180, 200, 1.0),
}


def make_dataset(path: Path, shortest: int, longest: int, skew: float, *, rows: int = 800, seed: int = 0) -> None:
    """Rows of about `shortest`..`longest` tokens (bos and eos included), cut from the corpus at random places."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    corpus = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "assets" / "corpus").glob("*.txt")))
    ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            length = shortest + int((longest - shortest) * rng.random() ** skew) - 2  # bos and eos come on top
            prompt = max(2, length // 5)
            start = rng.randrange(len(ids) - length)

            def text(window: list[int]) -> str:
                return str(tokenizer.decode(window)).replace("\ufffd", "")  # a byte sequence cut in two

            row = {
                "prompt": text(ids[start : start + prompt]),
                "completion": text(ids[start + prompt : start + length]),
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def token_lengths(path: Path, max_seq_length: int) -> dict[str, float]:
    from transformers import AutoTokenizer

    from bench.bare import tokenize_rows

    lengths = sorted(
        len(e["input_ids"]) for e in tokenize_rows(path, AutoTokenizer.from_pretrained(TINY), max_seq_length)
    )
    return {
        "rows": len(lengths),
        "min": lengths[0],
        "median": statistics.median(lengths),
        "mean": statistics.fmean(lengths),
        "max": lengths[-1],
    }


def smoothed(values: list[float], window: int = SMOOTH) -> list[float]:
    """Centred moving mean (shorter at the ends), so a falling curve is not read as noise."""
    half = window // 2
    return [statistics.fmean(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def compare_losses(padded: list[dict[str, Any]], packed: list[dict[str, Any]]) -> dict[str, Any]:
    """Step by step: the largest raw and smoothed differences, against the curve's own step-to-step noise."""
    a, b = [p["loss"] for p in padded], [p["loss"] for p in packed]
    if [p["step"] for p in padded] != [p["step"] for p in packed]:
        raise RuntimeError("the two runs logged different steps")
    sa, sb = smoothed(a), smoothed(b)
    noise = statistics.pstdev(x - s for x, s in zip(a, sa, strict=True))
    return {
        "max_abs_diff": max(abs(x - y) for x, y in zip(a, b, strict=True)),
        "max_abs_diff_smoothed": max(abs(x - y) for x, y in zip(sa, sb, strict=True)),
        "final_loss_padded": a[-1],
        "final_loss_packed": b[-1],
        "final_loss_diff": abs(a[-1] - b[-1]),
        "curve_noise": noise,  # std of the padded curve around its own centred moving mean
        "padded_curve": a,
        "packed_curve": b,
    }


def measure(scratch: Scratch, name: str, dataset: Path, repeats: int, steps: int) -> dict[str, Any]:
    from app.schemas import RunSpec

    runs: dict[str, list[dict[str, Any]]] = {"padded": [], "packed": []}
    base = {"method": "lora", "max_steps": steps, "save_steps": 0, "base_model": str(TINY), "dataset": str(dataset)}
    specs = {
        side: RunSpec.model_validate(base | {"packing": side == "packed"}).model_dump(mode="json") for side in runs
    }

    def run(side: str, attempt: int) -> None:
        figures = spawn("loradeck", specs[side], scratch.env, scratch.root / f"{name}-{side}-{attempt}")
        runs[side].append(figures)
        print(
            f"{name} {side} #{attempt + 1}: {steady_tokens_per_s(figures['points'], WARMUP):.0f} tokens/s", flush=True
        )

    alternate(repeats, run, ("packed", "padded"))
    speed = {side: statistics.median(steady_tokens_per_s(r["points"], WARMUP) for r in rs) for side, rs in runs.items()}
    ratio = speed["packed"] / speed["padded"]
    return {
        "spec_padded": specs["padded"],
        "padded_tokens_per_s": speed["padded"],
        "packed_tokens_per_s": speed["packed"],
        "ratio": ratio,
        "same_tokens": runs["padded"][0]["tokens"] == runs["packed"][0]["tokens"],
        "tokens": runs["padded"][0]["tokens"],
        "losses": compare_losses(runs["padded"][0]["points"], runs["packed"][0]["points"]),
        "runs": {side: [{k: v for k, v in r.items() if k != "points"} for r in rs] for side, rs in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side per dataset")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (batch 8)")
    parser.add_argument("--quick", action="store_true", help="12 steps, one repeat: a smoke test of the script")
    args = parser.parse_args()
    repeats, steps = (1, 12) if args.quick else (args.repeats, args.steps)
    scratch = Scratch(prefix="loradeck-packing-")
    results: dict[str, Any] = {}
    try:
        for name, (shortest, longest, skew) in DATASETS.items():
            path = scratch.root / f"{name}.jsonl"
            make_dataset(path, shortest, longest, skew)
            results[name] = {"lengths": token_lengths(path, 256)} | measure(scratch, name, path, repeats, steps)
    finally:
        scratch.close()
    mixed = results["mixed"]
    safe = mixed["losses"]["max_abs_diff_smoothed"] <= max(mixed["losses"]["curve_noise"], 0.01)
    figures = {
        "repeats": repeats,
        "steps": steps,
        "target": TARGET,
        "met": mixed["ratio"] >= TARGET,
        "long_target": LONG_TARGET,
        "long_met": results["long"]["ratio"] >= LONG_TARGET,
        "loss_within_noise": safe,
        "datasets": results,
    }
    command = ".venv/bin/python bench/packing.py" + (" --quick" if args.quick else f" --repeats {repeats}")
    name = "packing-quick" if args.quick else "packing"
    write_result(name, command, figures)
    table = report(command, figures)
    if not args.quick:
        update_readme_section("packing", table)
    print(table)


def report(command: str, figures: dict[str, Any]) -> str:
    rows = []
    for name, r in figures["datasets"].items():
        lengths, losses = r["lengths"], r["losses"]
        if name == "mixed":
            target, met = f"≥ {TARGET}x", "yes" if figures["met"] else "no"
        else:
            target, met = f"≥ {LONG_TARGET}x", "yes" if figures.get("long_met") else "no"
        rows.append(
            f"| {name}: {lengths['min']}–{lengths['max']} tokens, median {lengths['median']:.0f} | "
            f"{r['padded_tokens_per_s']:.0f} | {r['packed_tokens_per_s']:.0f} | {r['ratio']:.2f}x | {target} | {met} | "
            f"{losses['final_loss_padded']:.4f} / {losses['final_loss_packed']:.4f} | "
            f"{losses['max_abs_diff_smoothed']:.4f} (noise {losses['curve_noise']:.4f}) |"
        )
    return "\n".join(
        [
            "## Packing: padding-free batches vs padded",
            "",
            f"`{command}` — recorded in `results/packing.json`. Both sides are loradeck's engine (`run_training`), "
            f"tiny model, LoRA r=8 all-linear, batch 8, {figures['steps']} steps, fp32 on CPU, the same spec but "
            "`packing`; rows cut from `assets/corpus` (mixed: 10 + 190·u³ tokens). Useful (non-padding) tokens/s "
            "after the warm-up steps, medians; the two sides alternate.",
            "",
            "| dataset | padded tokens/s | packed tokens/s | packed / padded | target | met "
            "| final loss padded / packed | max Δ of smoothed loss curves |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Both sides train on the same batches (same sampler and seed) and the same loss tokens; "
            "`noise` is the padded curve's own step-to-step spread around its centred 5-step moving mean.",
            "",
            "How it packs (`worker.data.encode.make_collator`): without flash attention (sdpa, the engine's "
            "default, here on the CPU), transformers keeps packed examples apart with a dense mask over each packed "
            "row (`masking_utils.find_packed_sequence_indices`, per row), so the batch's examples go best-fit "
            "decreasing into rows no longer than its longest example (`PackedRowsCollator`): attention costs the "
            "sum over rows of row length², never more than the padded batch's, and the linear layers skip most "
            "of the padding. The whole batch in one row (`DataCollatorWithFlattening`) cost (sum of the lengths)² "
            "in attention and was 0.62x padded on the long rows (1.61x on mixed; 2026-11-27, with that day's "
            "assets). `make_collator` keeps that one row for a model running flash "
            "attention, whose varlen kernels attend per example with no padding at all; the engine loads sdpa. "
            "On the long rows no two examples fit one row, so those batches come back padded (PadCollator's "
            "layout): the same shapes through the packed-sequence mask measured 0.85x (every pair 0.84-0.85x, "
            "2026-12-08), and the long row's ratio is now the same computation on both sides, within run-to-run "
            "noise.",
        ]
    )


if __name__ == "__main__":
    main()
