"""Checkpoints: tensors as safetensors, everything else as JSON, a sha256 for every file.

A checkpoint is a directory `step-000120/` holding `model.safetensors`,
`optimizer.safetensors`, `state.json` (step, data position, RNG states, optimizer settings)
and `checksums.json`. It is written into `step-000120.tmp/`, every file fsynced, then renamed:
a crash at any moment leaves either the whole checkpoint or none. Loading verifies every
checksum, so a corrupt or truncated file is named and the previous good checkpoint is used.
Nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmspec.runtime.errors import RunError

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "CorruptCheckpoint",
           "save_weights", "load_weights", "load_model_state", "unique_state", "optimizer_tensors", "load_optimizer", "rng_state", "set_rng_state",
           "write_json_atomic", "sha256_file", "fsync_dir"]


class CorruptCheckpoint(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_json_atomic(path: Path, data) -> None:
    """Write JSON through a temporary file, fsync, rename: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- weights


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once (tied embeddings): safetensors stores no
    aliases. The first name wins, which is the order `named_parameters` gives."""
    seen: set[int] = set()
    out = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    save_file(unique_state(model), str(path), metadata=metadata)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load what `save_weights` wrote."""
    load_model_state(model, load_file(str(path)), str(path))


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict saved by `unique_state`: a tied twin missing from it is fine (it
    shares storage with the tensor that is there); anything else missing or extra is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    own = unique_state(model)
    missing = [m for m in missing if m in own]
    if missing or unexpected:
        raise RunError(f"the weights in {source} do not fit the model: missing {missing[:6]}, "
                       f"unexpected {list(unexpected)[:6]}",
                       help="the run's spec and these weights disagree; start a fresh run")


# ----------------------------------------------------------------------------- optimizer and RNG


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as flat tensors `state.{param}.{key}` plus JSON for the rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore the optimizer's state (moments, step counts). Its settings (lr, betas, weight
    decay, ...) stay those it was built with: a resume with `--force` and a new setting uses it."""
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    saved_groups = meta["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(saved_groups, optimizer.param_groups)):
        raise RunError("the checkpoint's optimizer state does not fit this optimizer",
                       help="the optimizer or the model changed since the checkpoint; start the stage afresh")
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved_groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise RunError(f"the checkpoint's optimizer state does not fit this optimizer ({err})",
                       help="the optimizer kind changed since the checkpoint; start the stage afresh") from None
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)


def rng_state() -> dict:
    """The global torch generators (dropout draws from them), as base64 for JSON."""
    out = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["cpu"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


# ----------------------------------------------------------------------------- checkpoints


def _name(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(directory: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict,
                    *, keep: int = 3) -> Path:
    """Write `tensors` (group -> name -> tensor; one safetensors file per group) and `state`
    (JSON) as checkpoint `step` in `directory`, atomically; then delete all but the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / _name(step)
    tmp = directory / (_name(step) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for group, group_tensors in tensors.items():
        save_file(group_tensors, str(tmp / f"{group}.safetensors"))
    with open(tmp / "state.json", "w") as f:
        json.dump(state, f)
    sums = {}
    for path in sorted(tmp.iterdir()):
        _fsync_file(path)
        sums[path.name] = sha256_file(path)
    with open(tmp / "checksums.json", "w") as f:
        json.dump(sums, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():  # a checkpoint of this step from before a crash: the new one replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (no `.tmp`), oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith("step-") and
             not p.name.endswith(".tmp") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def verify(path: Path) -> None:
    """Raise CorruptCheckpoint naming the file whose checksum is wrong or that is missing."""
    try:
        sums = json.loads((path / "checksums.json").read_text())
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{path / 'checksums.json'}: unreadable ({err})") from None
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpoint(f"{f}: missing")
        if sha256_file(f) != digest:
            raise CorruptCheckpoint(f"{f}: checksum mismatch (corrupt or truncated)")


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    verify(path)
    tensors = {p.name[: -len(".safetensors")]: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    return tensors, json.loads((path / "state.json").read_text())


def latest_checkpoint(directory: Path, warn=print, max_step: int | None = None) -> tuple[Path, dict, dict] | None:
    """The newest checkpoint whose checksums hold (and whose step is at most `max_step`), with
    its tensors and state; each corrupt one on the way is named through `warn`. None when there
    is no good checkpoint."""
    for path in reversed(list_checkpoints(directory)):
        if max_step is not None and int(path.name[5:]) > max_step:
            warn(f"checkpoint {path.name} is past the stage's last step ({max_step}); not using it")
            continue
        try:
            tensors, state = load_checkpoint(path)
        except CorruptCheckpoint as err:
            warn(f"checkpoint {path.name} is corrupt, not using it: {err}")
            continue
        return path, tensors, state
    return None
