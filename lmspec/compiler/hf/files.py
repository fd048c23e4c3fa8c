"""Finding a checkpoint's files on disk: config.json and its safetensors shards.

Nothing here imports torch: the names and shapes of the tensors are read from the
safetensors header (8 bytes of length, then JSON), so `lmspec import-hf` can look at a
70B checkpoint without loading a single weight.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import HFImportError

__all__ = ["read_hf_config", "safetensors_files", "tensor_shapes"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# formats we refuse to read: the pickle ones run arbitrary code when loaded
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _directory(directory: str | Path) -> Path:
    path = Path(directory)
    if not path.exists():
        raise HFImportError(f"{path}: no such directory")
    if not path.is_dir():
        raise HFImportError(f"{path}: not a directory; give the folder that holds config.json")
    return path


def read_hf_config(directory: str | Path) -> dict:
    """The parsed config.json of a local Hugging Face checkpoint directory."""
    path = _directory(directory) / "config.json"
    if not path.is_file():
        raise HFImportError(f"{path.parent}: no config.json (is this a Hugging Face model directory?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HFImportError(f"{path}: cannot read it as JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise HFImportError(f"{path}: expected a JSON object")
    return config


def safetensors_files(directory: str | Path) -> list[Path]:
    """The safetensors file(s) of a checkpoint: model.safetensors, or the shards listed in
    model.safetensors.index.json. A directory with only pickle weights is refused."""
    root = _directory(directory)
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise HFImportError(f"{index}: not a valid safetensors index ({exc})") from exc
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not (root / s).is_file()]
        if absent:
            raise HFImportError(f"{index} lists shards that are not in {root}: {', '.join(absent)}")
        return [root / s for s in shards]
    if (root / SINGLE_FILE).is_file():
        return [root / SINGLE_FILE]
    pickles = [p for p in _PICKLE_FILES if (root / p).is_file()] or sorted(p.name for p in root.glob("*.bin"))
    if pickles:
        raise HFImportError(
            f"{root} holds only {', '.join(pickles)}: PyTorch pickle weights, which lmspec never loads "
            "because unpickling can run arbitrary code. Convert the checkpoint to safetensors first, "
            "in an environment you trust, e.g.\n"
            "    from transformers import AutoModel\n"
            f"    AutoModel.from_pretrained({str(root)!r}).save_pretrained({str(root)!r}, safe_serialization=True)\n"
            "(use the model's own class, e.g. AutoModelForCausalLM, to keep its head)."
        )
    raise HFImportError(f"{root}: no {SINGLE_FILE} or {INDEX_FILE} (the weights are missing)")


def _header(path: Path) -> dict:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise HFImportError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise HFImportError(f"{path}: not a safetensors file (header length {length})")
        try:
            return json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HFImportError(f"{path}: not a safetensors file ({exc})") from exc


def tensor_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint and its shape, read from the safetensors headers."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in safetensors_files(directory):
        for name, info in _header(path).items():
            if name != "__metadata__":
                shapes[name] = tuple(info["shape"])
    return shapes
