"""The run directory: one folder per run, a documented layout (docs/running.md).

    RUN/
      manifest.json            versions, device, seeds, command, overrides, start/end times, status
      spec/                    the spec's files as they were read, and resolved.json
      spec.sha256              the content hash of resolved.json (what --resume compares)
      tokenizers/NAME/         each tokenizer the run built (tokenizer.json)
      stages/STAGE/
        status.json            pending | running | finished | failed | interrupted, step, total
        metrics.jsonl          one JSON object a line: stage, step, loss, lr, grad_norm, tokens_per_s, ...
        samples.jsonl          a few samples at each evaluation
        checkpoints/step-N/    model + optimizer safetensors, state.json, checksums.json (last K kept)
        final/                 model.safetensors, arch.json, tokenizer/ (what later stages read)
        loss.png               the loss curves
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from lmspec.runtime.checkpoint import write_json_atomic
from lmspec.runtime.errors import RunError

__all__ = ["RunDir", "canonical_spec", "spec_diff", "default_run_dir", "MetricsLog"]

LAYOUT_VERSION = 1


def canonical_spec(report) -> dict:
    """The resolved, validated spec as plain JSON: every block with every default filled in.
    Two specs that mean the same run have the same canonical form (comments, order of keys,
    `2k` vs `2000` do not matter)."""
    blocks = {}
    for name, typed in report.spec.blocks.items():
        blocks[name] = {"kind": report.spec.resolved.blocks[name].kind,
                        **typed.model_dump(mode="json", by_alias=True)}
    return {"blocks": blocks}


def spec_hash(canonical: dict) -> str:
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def spec_diff(old: dict, new: dict) -> str:
    """A readable unified diff of two canonical specs."""
    a = json.dumps(old, indent=2, sort_keys=True).splitlines()
    b = json.dumps(new, indent=2, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "run's spec", "spec now", lineterm="", n=2))


def default_run_dir(spec_path: str | Path, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{Path(spec_path).stem}-{stamp}"
    path, n = base, 1
    while path.exists():  # two runs started in one second
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class MetricsLog:
    """Append-only JSON lines, flushed per line so a crash loses at most the line being written."""

    def __init__(self, path: Path):
        self.path = path
        self._f = None

    def write(self, record: dict) -> None:
        if self._f is None:
            self._f = open(self.path, "a")
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after `step`: a killed run logged steps its last checkpoint does
        not hold, and the resumed run logs them again."""
        self.close()
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line.strip() and _step(line) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # a torn last line: drop it


def read_jsonl(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a crash
    return out


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # ---- creating and opening

    @classmethod
    def create(cls, path: Path, *, report, spec_path: str, overrides: tuple[str, ...], device: str,
               extra: dict | None = None) -> "RunDir":
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunError(f"{path} already exists; lmspec never overwrites a run",
                           help=f"resume it with `lmspec run --resume {path}`, or choose another --out")
        import torch

        import lmspec

        run = cls(path)
        try:
            (path / "stages").mkdir(parents=True, exist_ok=True)
            run.save_spec(report, canonical_spec(report))
            write_json_atomic(path / "manifest.json", {
                "layout": LAYOUT_VERSION,
                "spec": str(Path(spec_path).resolve()),
                "overrides": list(overrides),
                "command": sys.argv if Path(sys.argv[0]).name in ("lmspec", "__main__.py") else None,
                "versions": {"lmspec": lmspec.__version__, "torch": torch.__version__,
                             "python": platform.python_version()},
                "device": device,
                "host": platform.node(),
                "started": _now(),
                "finished": None,
                "status": "running",
                **(extra or {}),
            })
        except OSError as err:
            raise RunError(f"cannot create the run directory {path}: {err.strerror or err}",
                           help="choose a writable --out with free space") from None
        return run

    def save_spec(self, report, canonical: dict) -> None:
        """The spec's files as read, under spec/ with their layout relative to the root spec's
        folder (imports from outside it under spec/_outside/), and the canonical resolved form."""
        folder = self.path / "spec"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        root = Path(report.path).resolve().parent
        for name, text in report.sources.items():
            if name.startswith("<"):
                continue
            source = Path(name).resolve()
            try:
                rel = source.relative_to(root)
            except ValueError:
                rel = Path("_outside") / source.relative_to(source.anchor)
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        write_json_atomic(folder / "resolved.json", canonical)
        (self.path / "spec.sha256").write_text(spec_hash(canonical) + "\n")

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        path = Path(path)
        if not (path / "manifest.json").is_file():
            what = "does not exist" if not path.exists() else "is not an lmspec run directory (no manifest.json)"
            raise RunError(f"{path} {what}", help="give the directory `lmspec run` wrote (runs/NAME-TIME/)")
        run = cls(path)
        run.manifest  # noqa: B018  (a damaged manifest is reported now)
        return run

    # ---- the manifest

    @property
    def manifest(self) -> dict:
        try:
            return json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            raise RunError(f"{self.path / 'manifest.json'} cannot be read: {err}",
                           help="the run directory is damaged; its stages/ still hold metrics and checkpoints") from None

    # ---- one process at a time

    @contextlib.contextmanager
    def lock(self):
        """An exclusive lock on the run for as long as a process works in it: a second `--resume`
        of a run that is still going is refused, and `show` can tell a dead run from a live one."""
        f = open(self.path / ".lock", "a+")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunError(f"{self.path} is in use by another lmspec process",
                               help="wait for it to finish, or stop it (Ctrl-C) and resume") from None
            yield
        finally:
            f.close()

    def is_live(self) -> bool:
        """Whether a process holds the run's lock now."""
        lock = self.path / ".lock"
        if not lock.exists():
            return False
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def update_manifest(self, **changes) -> None:
        m = self.manifest
        m.update(changes)
        write_json_atomic(self.path / "manifest.json", m)

    def finish(self, status: str) -> None:
        self.update_manifest(status=status, finished=_now())

    @property
    def canonical(self) -> dict:
        return json.loads((self.path / "spec" / "resolved.json").read_text())

    # ---- stages

    def stage_dir(self, stage: str) -> Path:
        d = self.path / "stages" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage_status(self, stage: str) -> dict:
        p = self.path / "stages" / stage / "status.json"
        if not p.exists():
            return {"status": "pending", "step": 0}
        return json.loads(p.read_text())

    def set_stage_status(self, stage: str, status: str, **extra) -> None:
        record = {**self.stage_status(stage), "status": status, **extra, "updated": _now()}
        write_json_atomic(self.stage_dir(stage) / "status.json", record)

    def metrics(self, stage: str) -> list[dict]:
        return read_jsonl(self.path / "stages" / stage / "metrics.jsonl")

    def samples(self, stage: str) -> list[dict]:
        return read_jsonl(self.path / "stages" / stage / "samples.jsonl")

    def stages(self) -> list[str]:
        order = self.manifest.get("stages") or []
        found = sorted(p.name for p in (self.path / "stages").iterdir() if p.is_dir()) if (self.path / "stages").is_dir() else []
        return order + [s for s in found if s not in order]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
