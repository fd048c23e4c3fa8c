"""`--tensorboard` across an interrupted run: each stage writes its own event directory, and a
stage that resumes from its checkpoint of step k opens it with `purge_step=k + 1`, so TensorBoard
shows each (tag, step) once — the resumed session's point — as metrics.jsonl holds each step
once. A stage that finished before the crash is not run again and keeps its events. The
`tensorboard` package is not needed: a stand-in SummaryWriter records what it is given."""

from __future__ import annotations

import pytest
import torch

from lmspec.runtime import api
from lmspec.runtime.api import open_run, resume, run
from lmspec.runtime.errors import RunError
from lmspec.runtime.progress import Progress
from lmspec.runtime.stages.train import TrainStage

REAL_STEP = TrainStage.step

SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
model m { vocab: tok.vocab_size, context: 32, layers: 1, d_model: 16, heads: 2, dropout: 0.0 }
train pretrain { model: m, objective: clm, data: d, steps: 12, batch: 2, eval_every: 4, checkpoint_every: 3,
                 log_every: 1 }
train more { model: m from pretrain, objective: clm, data: d, steps: 4, batch: 2, checkpoint_every: 2, log_every: 1 }
"""


class Writer:
    """The part of torch.utils.tensorboard.SummaryWriter the runtime uses; every instance is kept."""

    opened: list["Writer"] = []

    def __init__(self, log_dir: str, purge_step: int | None = None):
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        Writer.opened.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        assert not self.closed
        self.scalars.append((tag, step, value))

    def close(self) -> None:
        self.closed = True


def shown(writers: list[Writer]) -> list[tuple[str, int, float]]:
    """What TensorBoard shows of one directory, its sessions in the order they were opened: a
    session's SessionLog START (written for a purge_step) hides the earlier sessions' events at
    or after that step, in every tag — except the directory's first START, which only marks a start."""
    points, started = [], False
    for w in writers:
        if w.purge_step is not None:
            if started:
                points = [p for p in points if p[1] < w.purge_step]
            started = True
        points += w.scalars
    return points


@pytest.fixture
def project(tmp_path, monkeypatch):
    words = "the cat sat on a mat and then it ran to the park where a dog was happy".split()
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (40,), generator=g)) for _ in range(40)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs))
    (tmp_path / "spec.lmspec").write_text(SPEC)
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(api, "_tensorboard_writer", lambda: Writer)
    Writer.opened = []
    return tmp_path


def crash_at(monkeypatch, stage: str, index: int) -> None:
    """The process stops hard in step `index` of `stage` (a second Ctrl-C): no checkpoint of it."""
    def step(self, i):
        if self.name == stage and i == index:
            raise KeyboardInterrupt
        return REAL_STEP(self, i)

    monkeypatch.setattr(TrainStage, "step", step)


def test_a_resumed_stage_is_shown_once_per_step_and_a_finished_one_keeps_its_events(project, monkeypatch):
    quiet = Progress(quiet=True)
    out = project / "run"
    crash_at(monkeypatch, "pretrain", 8)  # steps 1..8 logged, checkpoints at 3 and 6
    with pytest.raises(RunError, match="interrupted"):
        run(project / "spec.lmspec", out=out, progress=quiet, tensorboard=True)
    crash_at(monkeypatch, "more", 3)  # pretrain resumes at 6 and finishes; more logs 1..3, checkpoint at 2
    with pytest.raises(RunError, match="interrupted"):
        resume(out, progress=quiet, tensorboard=True)
    monkeypatch.setattr(TrainStage, "step", REAL_STEP)
    r = resume(out, progress=quiet, tensorboard=True)  # pretrain finished earlier: only more, from 2
    assert r.status("more")["status"] == "finished"

    board = out / "tensorboard"
    assert [(w.log_dir, w.purge_step) for w in Writer.opened] == [
        (str(board / "pretrain"), 1), (str(board / "pretrain"), 7), (str(board / "more"), 1), (str(board / "more"), 3)]
    assert all(w.closed for w in Writer.opened)
    for stage, steps in (("pretrain", 12), ("more", 4)):
        metrics = r.metrics(stage)
        assert [m["step"] for m in metrics] == list(range(1, steps + 1))  # metrics.jsonl: each step once
        writers = [w for w in Writer.opened if w.log_dir == str(board / stage)]
        logged = [(tag, step) for w in writers for tag, step, _ in w.scalars if tag == f"{stage}/loss"]
        assert len(logged) > steps  # the resumed session did log steps again ...
        points = shown(writers)
        pairs = [(tag, step) for tag, step, _ in points]
        assert len(pairs) == len(set(pairs))  # ... and TensorBoard shows each (tag, step) once
        assert all(tag.startswith(f"{stage}/") for tag, _ in pairs)
        # the points shown are those of metrics.jsonl, the resumed session's where it logged again
        assert {step: v for tag, step, v in points if tag == f"{stage}/loss"} == {m["step"]: m["loss"] for m in metrics}
        evals = {step: v for tag, step, v in points if tag == f"{stage}/eval_loss"}
        assert evals == {m["step"]: m["eval_loss"] for m in metrics if "eval_loss" in m} and evals


def test_a_stage_started_again_from_step_0_hides_all_its_earlier_events(project, monkeypatch):
    """No good checkpoint (here: killed before the first one), so the stage runs from step 0:
    purge_step 1 hides every step the earlier session logged."""
    out = project / "run"
    crash_at(monkeypatch, "pretrain", 2)
    with pytest.raises(RunError, match="interrupted"):
        run(project / "spec.lmspec", out=out, progress=Progress(quiet=True), tensorboard=True, only="pretrain")
    monkeypatch.setattr(TrainStage, "step", REAL_STEP)
    r = resume(out, progress=Progress(quiet=True), tensorboard=True)
    assert [w.purge_step for w in Writer.opened] == [1, 1]
    points = shown(Writer.opened)
    assert sorted(step for tag, step, _ in points if tag == "pretrain/loss") == list(range(1, 13))
    assert {step: v for tag, step, v in points if tag == "pretrain/loss"} == {
        m["step"]: m["loss"] for m in open_run(r.path).metrics("pretrain")}


def test_a_run_started_with_tensorboard_goes_on_writing_events_when_resumed_without_it(project, monkeypatch):
    """The manifest records --tensorboard: a resume that forgets the flag leaves no gap."""
    out = project / "run"
    crash_at(monkeypatch, "pretrain", 5)
    with pytest.raises(RunError, match="interrupted"):
        run(project / "spec.lmspec", out=out, progress=Progress(quiet=True), tensorboard=True, only="pretrain")
    assert open_run(out).manifest["tensorboard"] is True
    monkeypatch.setattr(TrainStage, "step", REAL_STEP)
    resume(out, progress=Progress(quiet=True))  # no tensorboard=True
    assert [w.purge_step for w in Writer.opened] == [1, 4]  # resumed from the checkpoint of step 3
    points = shown(Writer.opened)
    assert sorted(step for tag, step, _ in points if tag == "pretrain/loss") == list(range(1, 13))
