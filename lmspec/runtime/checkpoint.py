"""Checkpoints: tensors as safetensors, everything else as JSON, a sha256 for every file.

A checkpoint is a directory `step-000120/` holding `model.safetensors`,
`optimizer.safetensors`, `state.json` (step, data position, RNG states, optimizer settings)
and `checksums.json`. It is written into `step-000120.tmp/`, every file fsynced, then renamed:
a crash at any moment leaves either the whole checkpoint or none. Loading verifies every
checksum, so a corrupt or truncated file is named and the previous good checkpoint is used.
Nothing is ever unpickled.

A sharded checkpoint (`parallel: fsdp`) holds `shards/rank-00000-of-00002.safetensors`, ...
instead of the two tensor files: every rank writes its own slices of the model and optimizer
state through torch.distributed.checkpoint (DCP)'s safetensors writer, and each file's header
says, as JSON, where in every tensor its slices lie. DCP reads them back into any sharding —
another world size, or whole tensors in one process — without a process group. DCP's default
format is not used: its `.metadata` file is a pickle, and loading it unpickles.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmspec.runtime.errors import RunError

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "CorruptCheckpoint",
           "save_weights", "load_weights", "load_model_state", "unique_state", "tied_names", "optimizer_tensors",
           "load_optimizer", "optimizer_layout", "rng_state", "set_rng_state", "Sharded", "ShardedTensors",
           "sharded_state", "load_sharded_state", "load_whole_state_sharded", "gathered_model_state",
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


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """{twin: first} for each state-dict entry that shares its tensor with an earlier one (tied
    embeddings): checkpoints keep the first name only, as `unique_state` does."""
    first: dict[int, str] = {}
    twins = {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = t.data_ptr() if t.numel() else id(t)
        if key in first:
            twins[name] = first[key]
        else:
            first[key] = name
    return twins


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> None:
    """The model's weights as one safetensors file; `state`: the tensors to write instead of the
    model's own (a sharded model's, gathered by `gathered_model_state`)."""
    save_file(unique_state(model) if state is None else state, str(path), metadata=metadata)


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


def optimizer_layout(model: torch.nn.Module, groups: list[dict]) -> list[str]:
    """The parameter names in the order of an optimizer built on `groups`
    (`engine.param_groups`): how the single-process format numbers the optimizer's state."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in groups for p in g["params"]]


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


def save_checkpoint(directory: Path, step: int, tensors: "dict[str, dict[str, torch.Tensor]] | Sharded", state: dict,
                    *, keep: int = 3) -> Path | None:
    """Write `tensors` (group -> name -> tensor, one safetensors file per group; or `Sharded`, one
    file per rank under shards/) and `state` (JSON) as checkpoint `step` in `directory`,
    atomically; then delete all but the newest `keep`. With several processes it is called on
    every rank: rank 0 writes and the others return at once, except that each writes its slices
    of a `Sharded` into the directory rank 0 made. Returns the checkpoint's path on rank 0."""
    from lmspec.runtime import distributed

    w = distributed.world()
    sharded = isinstance(tensors, Sharded)
    if not w.main and not sharded:
        return None
    final = directory / _name(step)
    tmp = directory / (_name(step) + ".tmp")
    if w.main:
        directory.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / SHARDS if sharded else tmp).mkdir(parents=True)
    if sharded:
        distributed.barrier()  # the other ranks write into tmp/ once rank 0 has made it afresh
        _write_all_shards(tensors.tensors, tmp / SHARDS, w, step)
        if not w.main:
            return None
    else:
        for group, group_tensors in tensors.items():
            save_file(group_tensors, str(tmp / f"{group}.safetensors"))
    with open(tmp / "state.json", "w") as f:
        json.dump(state, f)
    sums = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_file(path)
        sums[path.relative_to(tmp).as_posix()] = sha256_file(path)
    with open(tmp / "checksums.json", "w") as f:
        json.dump(sums, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if sharded:
        fsync_dir(tmp / SHARDS)
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


def load_checkpoint(path: Path, *, check: bool = True
                    ) -> "tuple[dict[str, dict[str, torch.Tensor]] | ShardedTensors, dict]":
    """(tensors, state) of a checkpoint, after verifying every checksum unless `check` is False
    (another rank verified it just before). The tensors of a sharded checkpoint are read when
    asked (`ShardedTensors`)."""
    if check:
        verify(path)
    state = json.loads((path / "state.json").read_text())
    if (path / SHARDS).is_dir():
        tensors = ShardedTensors(path / SHARDS)
        if check:
            tensors.metadata  # every rank's file there, and each header readable
        return tensors, state
    tensors = {p.name[: -len(".safetensors")]: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    return tensors, state


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


# ----------------------------------------------------------------------------- sharded checkpoints (fsdp)

#: the folder of a sharded checkpoint's tensors: rank-00000-of-00002.safetensors, ...
SHARDS = "shards"


class Sharded:
    """Tensors of which each rank holds its own slices (FSDP's DTensors), and whole tensors that
    are the same on every rank (rank 0 writes those): what `save_checkpoint` has every rank write."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors


@contextlib.contextmanager
def _quiet_dcp():
    """DCP warns that it runs in one process when no process group is used: that is on purpose
    here (each rank reads and writes its own files; no plans are exchanged between ranks)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _write_shards(tensors: dict[str, torch.Tensor], directory: Path, rank: int, size: int) -> None:
    """This rank's slices as one safetensors file, through DCP's safetensors writer in this
    process alone (no_dist: no save plans are pickled between ranks); the slices of the ranks
    never overlap, so the files together hold each tensor once."""
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.tensor import DTensor

    own = {k: v for k, v in tensors.items() if isinstance(v, DTensor) or rank == 0}
    private = directory / f".rank-{rank:05d}"  # the writer names its file as if it were alone
    with _quiet_dcp():
        save(own, storage_writer=HuggingFaceStorageWriter(str(private), save_distributed=True), no_dist=True)
    for i, f in enumerate(sorted(private.glob("*.safetensors"))):
        os.replace(f, directory / f"rank-{rank:05d}-of-{size:05d}{f'-{i}' if i else ''}.safetensors")
    shutil.rmtree(private)


def _write_all_shards(tensors: dict[str, torch.Tensor], directory: Path, w, step: int) -> None:
    """Every rank writes its shards; if one could not (a full disk), every rank stops with its
    error, so no rank waits for a file that never comes and rank 0 says what went wrong."""
    from torch.distributed.checkpoint.api import CheckpointException

    from lmspec.runtime import distributed

    failure: BaseException | None = None
    try:
        _write_shards(tensors, directory, w.rank, w.size)
    except CheckpointException as err:  # DCP wraps what went wrong: say that instead
        failure = next(iter(err.failures.values()))[0] if err.failures else err
    except Exception as err:  # a full disk, or anything else: the other ranks must hear of it, not wait
        failure = err
    text = None
    if isinstance(failure, OSError):
        text = (failure.strerror or str(failure)) + (f" ({failure.filename})" if failure.filename else "")
    elif failure is not None:
        text = str(failure) or type(failure).__name__
    for rank, error in enumerate(distributed.gather_json(text)):
        if error is not None:
            raise RunError(f"rank {rank} could not write its shards of checkpoint {_name(step)}: {error}",
                           help="free some space or fix the run directory's permissions, then resume the run; "
                                "the checkpoints before this one are kept")


class ShardedTensors(Mapping):
    """The tensors of a sharded checkpoint, read when asked, never unpickled. `self["model"]`
    is the whole model in this process (what reading an unfinished stage's model needs);
    `load_into(template)` fills a state dict of any sharding — DTensors of another world size, or
    whole tensors in one process — reading from each file the slices it needs: DCP reshards,
    from the offsets each file's safetensors header records."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._metadata = None

    @property
    def metadata(self) -> dict:
        """{name: DCP's TensorStorageMetadata (size, dtype, the chunks the files hold)}"""
        if self._metadata is None:
            from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

            self._check_ranks()
            try:
                self._metadata = HuggingFaceStorageReader(str(self.directory)).read_metadata().state_dict_metadata
            except Exception as err:  # safetensors' own errors: a damaged header
                raise CorruptCheckpoint(f"{self.directory}: unreadable shards ({err})") from None
        return self._metadata

    def _check_ranks(self) -> None:
        """Every rank's file is there: rank-00000-of-00002 and rank-00001-of-00002."""
        ranks, sizes = set(), set()
        for f in self.directory.iterdir():
            named = re.fullmatch(r"rank-(\d+)-of-(\d+)(-\d+)?\.safetensors", f.name)
            if named:
                ranks.add(int(named[1]))
                sizes.add(int(named[2]))
        if len(sizes) != 1:
            raise CorruptCheckpoint(f"{self.directory}: no shards" if not sizes else
                                    f"{self.directory}: shards of different world sizes {sorted(sizes)}")
        size = sizes.pop()
        missing = sorted(set(range(size)) - ranks)
        if missing:
            raise CorruptCheckpoint(f"{self.directory}: the shard of rank{'s' * (len(missing) > 1)} "
                                    f"{', '.join(map(str, missing))} (of {size}) is missing")

    def __iter__(self):
        return iter(sorted({name.split(".", 1)[0] for name in self.metadata}))

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __contains__(self, group) -> bool:
        return group in set(self)

    def __getitem__(self, group: str) -> dict[str, torch.Tensor]:
        prefix = group + "."
        whole = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in self.metadata.items()
                 if k.startswith(prefix)}
        if not whole:
            raise KeyError(group)
        self.load_into(whole)
        return {k[len(prefix):]: v for k, v in whole.items()}

    def load_into(self, tensors: dict[str, torch.Tensor]) -> None:
        """Read every entry of `tensors` (whole tensors or DTensors, of the checkpoint's global
        shapes) in place. Only this process's slices are read; nothing is exchanged between ranks."""
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

        for name, t in tensors.items():
            meta = self.metadata.get(name)
            if meta is None:
                raise CorruptCheckpoint(f"{self.directory}: no shard holds '{name}'")
            held = sum(math.prod(c.sizes) for c in meta.chunks)
            if held != math.prod(meta.size):  # a rank's file is missing: a tensor with a hole
                raise CorruptCheckpoint(f"{self.directory}: the shards hold {held} of the {math.prod(meta.size)} "
                                        f"values of '{name}' (a shard is missing or incomplete)")
            if tuple(meta.size) != tuple(t.shape):
                raise RunError(f"the checkpoint's '{name}' is {tuple(meta.size)}, the model's {tuple(t.shape)}",
                               help="the run's spec and this checkpoint disagree; start the stage afresh")
        with _quiet_dcp():
            load(tensors, storage_reader=HuggingFaceStorageReader(str(self.directory)), no_dist=True)


def _named_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tied: dict[str, str]):
    """(tensors, non-tensor state, param groups): the model's and optimizer's state by parameter
    name, as torch.distributed.checkpoint.state_dict gives it (DTensor slices under FSDP, whole
    tensors otherwise): `model.NAME`, `optimizer.NAME.KEY`. An optimizer that has not stepped
    yet is given its state first (a step with zero gradients at lr 0, which changes nothing)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    tensors = {f"model.{k}": v for k, v in model_state.items() if k not in tied}
    scalars = {}
    for name, entry in optim_state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{name}.{key}"] = value
            else:
                scalars[f"{name}.{key}"] = value
    return tensors, scalars, optim_state["param_groups"]


def sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  tied: dict[str, str]) -> tuple[Sharded, dict]:
    """What a checkpoint of an FSDP-sharded model holds: its tensors (each rank its slices) and
    the optimizer's non-tensor state as JSON."""
    tensors, scalars, _ = _named_state(model, optimizer, tied)
    return Sharded(tensors), {"scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict, names: set[str]) -> dict[str, dict]:
    """{parameter: {key: value}}, the optimizer state dict's "state", from `optimizer.NAME.KEY`
    tensors and `NAME.KEY` non-tensor values (of the parameters in `names`)."""
    state: dict[str, dict] = {}
    for key, t in tensors.items():
        if key.startswith("optimizer."):
            name, entry = key[len("optimizer."):].rsplit(".", 1)
            state.setdefault(name, {})[entry] = t
    for key, value in scalars.items():
        name, entry = key.rsplit(".", 1)
        if name in names:
            state.setdefault(name, {})[entry] = value
    return state


def load_sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, source: ShardedTensors, meta: dict,
                       tied: dict[str, str], where: str) -> None:
    """Fill `model` and `optimizer` — FSDP-sharded over any number of ranks, or whole in one
    process — from a sharded checkpoint. The optimizer's settings (lr, betas, ...) stay those it
    was built with, as `load_optimizer` keeps them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    template, _, groups = _named_state(model, optimizer, tied)
    saved = source.metadata
    mine = {k for k in template if k.startswith("model.")}
    theirs = {k for k in saved if k.startswith("model.")}
    if mine != theirs:
        raise RunError(f"the weights in {where} do not fit the model: missing {sorted(mine - theirs)[:6]}, "
                       f"unexpected {sorted(theirs - mine)[:6]}",
                       help="the run's spec and these weights disagree; start a fresh run")
    mine_opt, theirs_opt = _entries(template), _entries(saved)
    for name, entries in theirs_opt.items():
        if name in mine_opt and entries != mine_opt[name]:
            raise RunError(f"the optimizer state in {where} does not fit this optimizer: it holds {sorted(entries)} "
                           f"for '{name}', this optimizer {sorted(mine_opt[name])}",
                           help="the optimizer kind changed since the checkpoint; start the stage afresh")
    wanted = {k: v for k, v in template.items() if k in saved}  # a parameter the checkpoint has no state for gets none
    source.load_into(wanted)
    model_state = {k[len("model."):]: v for k, v in wanted.items() if k.startswith("model.")}
    for twin, first in tied.items():
        model_state[twin] = model_state[first]
    own = {n for g in groups for n in g["params"]}
    state = _optimizer_state(wanted, meta.get("scalars", {}), own)
    # not strict: the model's names were compared above, and a parameter that never had a
    # gradient (a head no objective reads, frozen under FSDP and DDP) has no state to load
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict={"state": state, "param_groups": groups}, options=StateDictOptions(strict=False))


def _entries(names) -> dict[str, set[str]]:
    """{parameter: its optimizer state's keys} from `optimizer.NAME.KEY` names."""
    out: dict[str, set[str]] = {}
    for key in names:
        if key.startswith("optimizer."):
            name, entry = key[len("optimizer."):].rsplit(".", 1)
            out.setdefault(name, set()).add(entry)
    return out


def load_whole_state_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             tensors: dict[str, dict[str, torch.Tensor]], meta: dict, tied: dict[str, str],
                             layout: list[str], where: str) -> None:
    """Fill an FSDP-sharded model and its optimizer from a single-process checkpoint (whole
    tensors; the optimizer's state numbered in the order `layout` names): each rank keeps its
    slices. Settings stay those the optimizer was built with."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    model_state = dict(tensors["model"])
    for twin, first in tied.items():
        if first in model_state:
            model_state[twin] = model_state[first]
    if sum(len(g["params"]) for g in meta["param_groups"]) != len(layout):
        raise RunError(f"the optimizer state in {where} does not fit this optimizer",
                       help="the optimizer or the model changed since the checkpoint; start the stage afresh")
    _, _, groups = _named_state(model, optimizer, tied)
    own = {n for g in groups for n in g["params"]}
    state: dict[str, dict] = {}
    for name, t in tensors.get("optimizer", {}).items():  # state.INDEX.KEY
        _, idx, key = name.split(".", 2)
        state.setdefault(layout[int(idx)], {})[key] = t
    for name, value in meta["scalars"].items():  # INDEX.KEY
        idx, key = name.split(".", 1)
        state.setdefault(layout[int(idx)], {})[key] = value
    state = {n: entry for n, entry in state.items() if n in own}  # a parameter frozen here has no state
    try:
        set_state_dict(model, optimizer, model_state_dict=model_state,
                       optim_state_dict={"state": state, "param_groups": groups},
                       options=StateDictOptions(full_state_dict=True))
    except (RuntimeError, KeyError, ValueError) as err:
        raise RunError(f"the state in {where} does not fit the model and optimizer ({str(err).splitlines()[0]})",
                       help="the run's spec changed since the checkpoint; start the stage afresh") from None


def gathered_model_state(model: torch.nn.Module, tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """The whole model gathered from every rank's slices onto rank 0's CPU, with each tied
    tensor once: the single-process weights file. Collective: every rank calls it; the others
    get {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().contiguous() for k, v in state.items() if k not in tied}
