"""The stage protocol: what every kind of stage (train today; feedback and rl next) provides,
so that one driver (`lmspec.runtime.loop.drive`) runs, logs, evaluates, checkpoints and
resumes all of them alike.

    setup()                 build the model(s), data and optimizer; load the initial weights
    step(i) -> metrics      optimizer step i (0-based); metrics has at least loss and tokens
    evaluate() -> metrics   held-out figures (eval_loss, perplexity, accuracy, ...)
    samples(i) -> [records] a few generations to look at (may be empty)
    state_dict()            (tensors by group, JSON state): everything a bit-identical resume needs
    load_state_dict(t, s)   the inverse, after setup()
    artifacts(dir)          write what later stages read (final weights, tokenizer) into dir

A stage never writes the run directory itself, logs, or loops: the driver does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["Stage", "RunContext", "StageArtifacts"]


@dataclass
class StageArtifacts:
    """What a finished stage hands to the stages that depend on it: named files or folders in
    its `final/` directory. A train stage gives "weights" (model.safetensors), "arch" and
    "tokenizer"; other kinds add their own names (a feedback stage its preference pairs, an rl
    stage its policy and value model). `final/artifacts.json` records the names, so a resumed
    run finds them again without knowing the stage kind."""

    files: dict[str, Path]
    model: str | None = None  # the model block a stage trained, if it trained one

    @property
    def weights(self) -> Path | None:
        return self.files.get("weights")

    @property
    def tokenizer(self) -> Path | None:
        return self.files.get("tokenizer")

    def moved_to(self, directory: Path) -> "StageArtifacts":
        """The same artifacts under another directory (final.tmp/ renamed to final/)."""
        return StageArtifacts({k: directory / p.name for k, p in self.files.items()}, self.model)


@dataclass
class RunContext:
    """What stages share within one run."""

    report: Any  # compiler.api.CheckReport
    schedule: Any  # compiler.compile.Schedule
    device: torch.device
    cache_dir: Path
    run_path: Path
    artifacts: dict[str, StageArtifacts] = field(default_factory=dict)
    tokenizers: dict[str, Any] = field(default_factory=dict)  # name -> runtime.tokenizers.Tokenizer
    log: Callable[[str], None] = print

    def tokenizer(self, name: str | None):
        """(tokenizer, name) for a stage: the one it names, else the spec's only one, else the
        default `bytes`. Built once per run and saved in RUN/tokenizers/NAME; a resumed run
        loads that saved copy, so its ids cannot change under it."""
        from lmspec.compiler import schema as S
        from lmspec.runtime.tokenizers import build_tokenizer, load_tokenizer

        blocks = self.report.spec.of_kind("tokenizer")
        if name is None:
            name = next(iter(blocks)) if len(blocks) == 1 else "bytes"
        if name in self.tokenizers:
            return self.tokenizers[name], name
        saved = self.run_path / "tokenizers" / name
        if (saved / "tokenizer.json").is_file():
            tok = load_tokenizer(saved)
        else:
            spec = blocks.get(name) or S.TokenizerSpec(kind=S.BytesTokenizer())
            block = self.report.spec.resolved.blocks.get(name)
            tok = build_tokenizer(spec, name=name, spec_file=block.span.file if block else str(self.run_path),
                                  data=self.report.spec.of_kind("data"), cache_dir=self.cache_dir)
            tok.save(saved)
        self.tokenizers[name] = tok
        return tok, name


class Stage:
    kind: str = ""

    def __init__(self, plan, ctx: RunContext):
        self.plan, self.ctx, self.spec = plan, ctx, plan.spec
        self.name = plan.name

    # the driver reads these
    total_steps: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    sharded: bool = False  # the model is sharded across the ranks (FSDP): every rank evaluates and samples

    def consolidate(self) -> None:
        """A sharded stage gathers its weights onto rank 0 before final/ is written."""

    def setup(self) -> None:
        raise NotImplementedError

    def step(self, i: int) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        return {}

    def samples(self, i: int) -> list[dict]:
        return []

    def state_dict(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        raise NotImplementedError

    def load_state_dict(self, tensors: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
        raise NotImplementedError

    def artifacts(self, directory: Path) -> StageArtifacts:
        raise NotImplementedError
