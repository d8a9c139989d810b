"""Supervised fine-tuning: next-token loss on the answers (or on whole texts)."""

from __future__ import annotations

from app.objectives.base import Objective

OBJECTIVE = Objective(
    name="sft",
    label="Supervised (SFT)",
    summary="Learn to write the dataset's answers: next-token loss on completions, assistant turns or texts.",
    shapes=("prompt_completion", "messages", "text"),
    methods=("lora", "qlora", "ia3", "prompt_tuning"),
    fields=("train_on_prompt", "packing"),
)
