"""Describing an uploaded dataset: the batched tokenizing of `worker.data.encode.encode_all` against a call per
row (what it did before), on a file of many short rows, in one invocation; and the whole description.

    .venv/bin/python bench/describe.py [--rows 100000] [--repeats 3]

The file is `--rows` prompt/completion rows of a few characters each (about 4.4 MB for 100k rows: the size
of an upload that took 20.9 s in one request before). Both sides encode the same rows with the bundled
tokenizer and must give the same examples; the two alternate (AB, BA, ...); medians of the repeats. The whole
description (`describe_dataset`: read, check, encode, cut, histogram) is timed once per repeat too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import update_readme_section, write_result  # noqa: E402


def make_file(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            out.write(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n")


def measure(rows: int, repeats: int) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from app.config import TINY_MODEL_DIR
    from worker.data.describe import describe_dataset
    from worker.data.encode import encode_all, encode_example
    from worker.data.files import read_rows

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "short-rows.jsonl"
        make_file(path, rows)
        size = path.stat().st_size
        parsed = read_rows(path)

        def per_row() -> list[Any]:
            return [encode_example(row, tokenizer, "") for row in parsed]

        def batched() -> list[Any]:
            return encode_all(parsed, tokenizer, "auto", False, path)

        times: dict[str, list[float]] = {"per_row": [], "batched": [], "describe": []}
        for repeat in range(repeats):
            order = [("per_row", per_row), ("batched", batched)]
            results = {}
            for name, encode in order if repeat % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                results[name] = encode()
                times[name].append(time.perf_counter() - started)
            assert results["per_row"] == results["batched"], "batched encoding differs from a call per row"
            started = time.perf_counter()
            describe_dataset(path, tokenizer, max_seq_length=256)
            times["describe"].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "rows": rows,
        "file_bytes": size,
        "repeats": repeats,
        "seconds": {name: [round(value, 2) for value in values] for name, values in times.items()},
        "median_s": {name: round(value, 2) for name, value in medians.items()},
        "speedup": round(medians["per_row"] / medians["batched"], 2),
        "same_examples": True,
    }


def report(command: str, figures: dict[str, Any]) -> str:
    median = figures["median_s"]
    return "\n".join(
        [
            "## Dataset description: batched tokenizing",
            "",
            f"`{command}` — recorded in `results/describe.json`. {figures['rows']:,} prompt/completion rows of a "
            f"few characters ({figures['file_bytes'] / 1e6:.1f} MB), the bundled tokenizer; encoding a call per "
            "row (before) against `encode_all`'s batches through the fast tokenizer's own batch encoder, the "
            "same examples on both sides; alternating, medians.",
            "",
            "| rows | a call per row (s) | batched (s) | speedup | whole description (s) |",
            "| --- | --- | --- | --- | --- |",
            f"| {figures['rows']:,} | {median['per_row']:.2f} | {median['batched']:.2f} | {figures['speedup']:.2f}x "
            f"| {median['describe']:.2f} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    command = f"bench/describe.py --rows {args.rows} --repeats {args.repeats}"
    figures = measure(args.rows, args.repeats)
    write_result("describe", command, figures)
    update_readme_section("describe", report(command, figures))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
