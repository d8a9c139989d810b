"""Token counts the dataset description shows: nearest-rank statistics, equal-width histograms, and an example
split into runs of trained and untrained tokens (worker.data.describe, worker.data.describe_pairs)."""

from __future__ import annotations

import math
from typing import Any

from transformers import PreTrainedTokenizerBase

from worker.data.chat import IGNORE_INDEX

Example = dict[str, list[int]]


def token_stats(lengths: list[int]) -> dict[str, Any]:
    """min, nearest-rank p50/p90/p99, max, mean and total of sorted lengths."""
    return {
        "min": lengths[0],
        **{f"p{p}": lengths[max(0, math.ceil(p / 100 * len(lengths)) - 1)] for p in (50, 90, 99)},
        "max": lengths[-1],
        "mean": sum(lengths) / len(lengths),
        "total": sum(lengths),
    }


def histogram(lengths: list[int], bins: int = 20) -> dict[str, list[int]]:
    """At most `bins` bins of equal integer width from the shortest to the longest of sorted lengths."""
    low, high = lengths[0], lengths[-1]
    width = max(1, math.ceil((high - low + 1) / bins))
    counts = [0] * math.ceil((high - low + 1) / width)
    for length in lengths:
        counts[(length - low) // width] += 1
    return {"edges": [low + i * width for i in range(len(counts) + 1)], "counts": counts}


def segments(tokenizer: PreTrainedTokenizerBase, example: Example) -> list[dict[str, Any]]:
    """The example's text in runs of trained / untrained tokens, each run decoded on its own."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return [{"text": tokenizer.decode(ids), "trained": trained} for trained, ids in runs]


def trained_count(example: Example) -> int:
    return sum(label != IGNORE_INDEX for label in example["labels"])
