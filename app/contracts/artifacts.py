"""What an artifact's `details` say, for the kinds whose figures a page reads: a GGUF export's progress, its
conversion and the check llama.cpp passed (worker.export writes them, the artifacts panel reads them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Stored(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Progress(_Stored):
    stage: str = Field(description="merging, waiting for the merge, converting, checking")
    done: int = 0
    total: int = 0


class TokenParity(_Stored):
    same: bool
    hf: int = Field(description="Token ids the merged model's tokenizer gives the prompt.")
    gguf: int = Field(description="Token ids the tokenizer inside the GGUF gives it.")
    first_difference: int | None = None
    hf_ids: list[int] | None = Field(default=None, description="From the first difference: a few ids of each.")
    gguf_ids: list[int] | None = None


class GgufCheck(_Stored):
    """llama.cpp against transformers on the run's prompts: token parity, then logits (16/8-bit) or greedy
    choices (4-bit); `passed` says whether the file may ship."""

    gguf_type: str
    prompts: int
    positions: int | None = Field(default=None, description="Token positions judged, at most 256 a prompt.")
    tokens: list[TokenParity] = Field(default_factory=list)
    tokens_same: bool
    passed: bool
    max_rel_logit_diff: float = Field(description="Largest |logit difference| over the position's logit spread.")
    max_abs_logit_diff: float | None = None
    top1_agreement: float | None = None
    tolerance: float | None = Field(default=None, description="16/8-bit: the largest max_rel_logit_diff allowed.")
    greedy_agreement: float | None = Field(default=None, description="4-bit: on the steps that are no near-tie.")
    greedy_agreement_all_steps: float | None = None
    clear_steps: float | None = Field(default=None, description="4-bit: the share of steps judged.")
    greedy_same_prefix: list[int] | None = Field(default=None, description="4-bit: tokens alike, per prompt.")
    threshold: float | None = Field(default=None, description="4-bit: the least greedy agreement allowed.")

    @property
    def tokens_matching(self) -> int:
        return sum(entry.same for entry in self.tokens)


class GgufConversion(_Stored):
    architecture: str
    bytes: int
    seconds: float
    peak_rss: int = Field(description="Peak RSS of the converting process, bytes.")
    tensors: int
    tensor_types: dict[str, int] = Field(default_factory=dict)
    pre_tokenizer: str | None = None
    llama_cpp_python: str | None = None


class ExportDetails(_Stored):
    type: str
    progress: Progress | None = None
    check: GgufCheck | None = None
    conversion: GgufConversion | None = None
    file: str | None = Field(default=None, description="The .gguf's name inside the download.")
    chat_format: str | None = Field(default=None, description="The Modelfile's TEMPLATE format.")
    seconds: float | None = None


def export_details_of(details: dict[str, Any] | None) -> ExportDetails | None:
    """A GGUF artifact's details, typed; None where it has none."""
    return ExportDetails.model_validate(details) if details and "type" in details else None
