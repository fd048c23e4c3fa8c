"""What the tests of runs across processes share (test_distributed, test_fsdp,
test_rl_distributed): a small project with its corpus, `lmspec` in a subprocess with this
checkout and the project's data cache, and a finished stage's weights and metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from lmspec.runtime.api import open_run
from lmspec.runtime.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


def write_project(path: Path, spec: str) -> Path:
    """`spec` as path/spec.lmspec beside corpus.txt: 60 seeded documents of 40 words."""
    words = "the cat sat on a mat and then it ran to the park where a dog was happy".split()
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (40,), generator=g)) for _ in range(60)]
    (path / "corpus.txt").write_text("\n\n".join(docs))
    (path / "spec.lmspec").write_text(spec)
    return path


def env(project: Path, **extra) -> dict:
    return {**os.environ, "LMSPEC_CACHE": str(project / "cache"), "PYTHONPATH": str(ROOT), **extra}


def cli(project: Path, *args, timeout: float = 180, **extra):
    """`lmspec ARGS` run in `project` (environment variables from `extra`)."""
    return subprocess.run([sys.executable, "-m", "lmspec", *args], capture_output=True, text=True,
                          env=env(project, **extra), cwd=project, timeout=timeout)


def quiet() -> Progress:
    return Progress(quiet=True)


def final_weights(run_dir: Path, stage: str = "pretrain") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "stages" / stage / "final" / "model.safetensors"))


def losses(run_dir: Path, key: str = "loss", stage: str = "pretrain") -> list[float]:
    return [m[key] for m in open_run(run_dir).metrics(stage) if key in m]
