"""Safetensors files written tensor by tensor, so a shard is never held in memory whole.

`safetensors.torch.save_file` builds the complete file in memory before writing it. A shard's header
only needs each tensor's dtype and shape, which are known before any value is, so `ShardWriter` writes
the header first and then each tensor's bytes as they are produced. The format (8-byte little-endian
header length, JSON header padded with spaces to 8 bytes, then the data buffer in header order) is the
one `safe_open` and transformers read.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
METADATA = {"format": "pt"}  # transformers refuses safetensors files whose metadata names another framework


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's place in a file, known before its values are."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries plus `__metadata__`), without reading data."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))  # type: ignore[no-any-return]


def specs_in_file_order(path: Path) -> list[TensorSpec]:
    """The tensors of one file, in the order their bytes lie on disk (reading them in it is sequential)."""
    header = read_header(path)
    header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    specs = []
    for name, entry in entries:
        if entry["dtype"] not in DTYPES_BY_NAME:
            raise ValueError(f"{path.name}: tensor {name} has dtype {entry['dtype']}, which loradeck cannot merge")
        specs.append(TensorSpec(name, DTYPES_BY_NAME[entry["dtype"]], tuple(entry["shape"])))
    return specs


def plan_shards(specs: Iterable[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most max_shard_bytes (a bigger tensor gets a shard alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    """transformers' names: model.safetensors alone, else model-00001-of-0000N.safetensors."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def encode_header(specs: list[TensorSpec]) -> bytes:
    """The 8-byte length plus the JSON header for these tensors laid out back to back in this order."""
    header: dict[str, Any] = {"__metadata__": METADATA}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": DTYPE_NAMES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data buffer starts 8-byte aligned, as safetensors' own writer does
    return struct.pack("<Q", len(text)) + text


class ShardWriter:
    """Writes one safetensors file: the header at once, then each tensor in the planned order.

    The sha256 of every byte written is kept, so the file's checksum costs no second read.
    """

    def __init__(self, path: Path, specs: list[TensorSpec]) -> None:
        self.path = path
        self._specs = specs
        self._next = 0
        self._digest = hashlib.sha256()
        self._handle = path.open("wb")
        self._emit(encode_header(specs))

    def _emit(self, data: bytes | memoryview) -> None:  # memoryview: written without a copy
        self._digest.update(data)
        self._handle.write(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.write_blocks(name, [tensor])

    def write_blocks(self, name: str, blocks: Iterable[torch.Tensor]) -> None:
        """Write the next planned tensor from consecutive blocks of its rows, so it is never whole in memory."""
        if self._next >= len(self._specs):
            raise ValueError(f"{self.path.name}: {name} is one tensor more than planned")
        spec = self._specs[self._next]
        rows = 0
        for block in blocks:
            shape = tuple(block.shape)
            whole = shape == spec.shape
            if name != spec.name or block.dtype != spec.dtype or not (whole or shape[1:] == spec.shape[1:]):
                raise ValueError(
                    f"{self.path.name}: got {name} {block.dtype} {shape}, planned {spec.name} {spec.dtype} {spec.shape}"
                )
            rows += spec.shape[0] if whole and spec.shape else (shape[0] if shape else 1)
            # Raw bytes in memory order; the platforms torch runs on are little-endian, as the format wants.
            self._emit(block.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        if rows != (spec.shape[0] if spec.shape else 1):
            raise ValueError(f"{self.path.name}: {name} got {rows} rows, planned {spec.shape}")
        self._next += 1

    def close(self) -> str:
        """Close the file, checking every planned tensor was written; returns the file's sha256."""
        self._handle.close()
        if self._next != len(self._specs):
            raise ValueError(f"{self.path.name}: {len(self._specs) - self._next} planned tensors were not written")
        return self._digest.hexdigest()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is not None:
            self._handle.close()


def write_index(out_dir: Path, shards: dict[str, list[TensorSpec]]) -> Path:
    """model.safetensors.index.json: the total byte size and which file holds each tensor."""
    total = sum(spec.nbytes for specs in shards.values() for spec in specs)
    weight_map = {spec.name: file for file, specs in shards.items() for spec in specs}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    path = out_dir / INDEX_FILE
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


def verify_shard(path: Path, specs: list[TensorSpec]) -> None:
    """Prove a written shard reads back as planned: safe_open parses it into exactly the planned tensors
    (names, dtypes, shapes, and so offsets) and the file ends where the last one does.

    Its bytes are not read back: that would read the page cache just written, not the disk. The sha256
    taken while writing goes into SHA256SUMS, which is what checks the file where it lands.
    """
    with safe_open(str(path), framework="pt") as handle:
        slices = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        found = {name: (piece.get_dtype(), tuple(piece.get_shape())) for name, piece in slices.items()}
    planned = {spec.name: (DTYPE_NAMES[spec.dtype], spec.shape) for spec in specs}
    size = len(encode_header(specs)) + sum(spec.nbytes for spec in specs)
    if found != planned or path.stat().st_size != size:
        raise OSError(f"{path.name} does not read back as it was written; the disk may be full or failing")


def model_tensors(model_dir: Path) -> dict[str, tuple[Path, TensorSpec]]:
    """Every tensor of a saved model with the file holding it: files in order, tensors in on-disk order."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        found = ", ".join(sorted(path.name for path in model_dir.iterdir())[:12])
        raise FileNotFoundError(
            f"{model_dir} has no {SINGLE_FILE} or {INDEX_FILE} (it holds: {found}); "
            "weights are read as safetensors only"
        )
    return {spec.name: (model_dir / file, spec) for file in files for spec in specs_in_file_order(model_dir / file)}


class TensorReader:
    """Reads tensors with safe_open, whole or in blocks of rows.

    safe_open maps the file, and every page a read touches counts toward the process's resident memory
    until the file is closed. Left open over a 5 GB shard, that grows to the whole shard; so the file is
    reopened whenever `map_budget` bytes have been read through the current mapping.
    """

    def __init__(self, map_budget: int = 16 << 20) -> None:
        self._budget = map_budget
        self._path: Path | None = None
        self._mapped = 0
        self._stack = ExitStack()
        self._handle: Any = None

    def _open(self, path: Path, nbytes: int) -> Any:
        if path != self._path or (self._mapped and self._mapped + nbytes > self._budget):
            self._stack.close()
            self._handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
            self._path, self._mapped = path, 0
        self._mapped += nbytes
        return self._handle

    def get(self, path: Path, spec: TensorSpec) -> torch.Tensor:
        return self._open(path, spec.nbytes).get_tensor(spec.name)  # type: ignore[no-any-return]

    def blocks(self, path: Path, spec: TensorSpec, block_bytes: int = 16 << 20) -> Iterator[torch.Tensor]:
        """The tensor as consecutive blocks of whole rows of about block_bytes (a small one in one block)."""
        if len(spec.shape) == 0 or spec.nbytes <= block_bytes or spec.shape[0] == 0:
            yield self.get(path, spec)
            return
        row_bytes = spec.nbytes // spec.shape[0]
        rows = max(1, block_bytes // max(row_bytes, 1))
        for start in range(0, spec.shape[0], rows):
            stop = min(start + rows, spec.shape[0])
            yield self._open(path, (stop - start) * row_bytes).get_slice(spec.name)[start:stop]

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
