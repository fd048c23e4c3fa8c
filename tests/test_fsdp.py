"""`parallel: fsdp` on 2 gloo processes: FSDP2 gives one process's losses for the same global
batch, every rank writes its slices of each checkpoint (DCP's safetensors files, nothing
pickled), clips the gradient by the norm over every rank's slices, a killed rank resumes to the
uninterrupted weights, a sharded run resumes in one process and a one-process run resumes
sharded, and a missing or damaged shard is named."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lmspec.runtime.api import open_run, resume, run
from lmspec.runtime.checkpoint import CorruptCheckpoint, ShardedTensors, latest_checkpoint, load_checkpoint
from run_support import cli, final_weights, losses, quiet, write_project
from conftest import gloo_group


# The classifier head no objective trains (LMS096) is there on purpose: it is frozen before
# sharding and has no optimizer state, which a resume in one process (where it is not frozen)
# must accept.
SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
model m { vocab: tok.vocab_size, context: 32, layers: 2, d_model: 32, heads: 4, position: rope, norm: rmsnorm,
          activation: swiglu, bias: false, tie_embeddings: true, dropout: 0.0, head: [lm, classifier(classes: 2)] }
train pretrain { model: m, objective: clm, data: d, steps: 20, batch: 8, grad_accum: 2, eval_every: 10,
                 checkpoint_every: 5, log_every: 1, samples: 1, optimizer: adamw(lr: 3e-3, weight_decay: 0.1),
                 parallel: fsdp }
"""


_final, _losses = final_weights, losses


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _checkpoints(run_dir: Path) -> Path:
    return run_dir / "stages" / "pretrain" / "checkpoints"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return write_project(tmp_path_factory.mktemp("fsdp"), SPEC)


@pytest.fixture
def env_cache(project, monkeypatch):
    monkeypatch.setenv("LMSPEC_CACHE", str(project / "cache"))
    monkeypatch.chdir(project)


@pytest.fixture(scope="module")
def two(project):
    """The spec trained sharded by `lmspec run --nproc 2`."""
    done = cli(project, "run", "spec.lmspec", "--nproc", "2", "--out", "two", "--plain")
    assert done.returncode == 0, done.stderr
    return project / "two"


@pytest.fixture(scope="module")
def one(project):
    """The same spec in one process, where `parallel` changes nothing."""
    os.environ["LMSPEC_CACHE"] = str(project / "cache")
    try:
        return run(project / "spec.lmspec", out=project / "one", progress=quiet()).path
    finally:
        del os.environ["LMSPEC_CACHE"]


@pytest.fixture(scope="module")
def killed(project):
    """A sharded 2-process run whose rank 1 was SIGKILLed right after step 12 (checkpoints at 5
    and 10)."""
    done = cli(project, "run", "spec.lmspec", "--nproc", "2", "--out", "killed", "--plain",
               LMSPEC_KILL_AT_STEP="12", LMSPEC_KILL_RANK="1")
    assert done.returncode == 1 and "rank 1 of 2 was killed by SIGKILL" in done.stderr, done.stderr
    return project / "killed"


# ----------------------------------------------------------------------------- same global batch, same losses


def test_fsdp_gives_the_losses_of_one_process(two, one):
    ones, twos = _losses(one), _losses(two)
    assert len(ones) == len(twos) == 20
    assert max(abs(a - b) for a, b in zip(ones, twos)) < 1e-5
    assert max(abs(a - b) for a, b in zip(_losses(one, "eval_loss"), _losses(two, "eval_loss"))) < 1e-5
    assert ones[-1] < ones[0] - 0.5  # it trained
    # the norm clip_grad (default 1.0) clips by is the norm of the whole gradient, not of rank 0's slices
    norms_one, norms_two = _losses(one, "grad_norm"), _losses(two, "grad_norm")
    assert max(abs(a - b) / a for a, b in zip(norms_one, norms_two)) < 1e-4 and min(norms_one) > 1.0
    # the final weights are gathered into the single-process file: same names (the tied head once)
    assert _gap(_final(one), _final(two)) < 1e-5 and "lm_head.weight" not in _final(two)
    assert [m["step"] for m in open_run(two).samples("pretrain")] == [10, 20]  # samples ran on the sharded model


def test_every_rank_writes_its_slices_and_nothing_is_pickled(two, one):
    ckpt = _checkpoints(two) / "step-0000015"
    assert sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()) == [
        "checksums.json", "shards/rank-00000-of-00002.safetensors", "shards/rank-00001-of-00002.safetensors",
        "state.json"]
    # rank 1 holds the second half of the embedding rows (FSDP2 cuts the first dimension); the
    # offsets are JSON in the safetensors header
    with safe_open(str(ckpt / "shards" / "rank-00001-of-00002.safetensors"), "pt") as f:
        offsets = json.loads(f.metadata()["DCP_SHARDING_INFO"])
        rows = f.get_slice("model.embed.weight").get_shape()[0]
        assert "optimizer.embed.weight.exp_avg" in f.keys() and "optimizer.embed.weight.step" not in f.keys()
    whole = _final(two)["embed.weight"].shape[0]
    assert offsets["model.embed.weight"]["saved_offsets"] == [whole - rows, 0] and rows == whole // 2
    # one process writes the single-process format, whatever `parallel` says
    assert (_checkpoints(one) / "step-0000015" / "model.safetensors").is_file()


# SGD moves the weights by lr times the clipped gradient, so a clip by a wrong norm shows in the
# losses (AdamW, dividing by its running second moment, would hide a clip factor that stays near constant)
CLIPPED = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
model m { vocab: tok.vocab_size, context: 32, layers: 2, d_model: 32, heads: 4, dropout: 0.0, tie_embeddings: true }
train pretrain { model: m, objective: clm, data: d, steps: 6, batch: 8, grad_accum: 2, log_every: 1, samples: 0,
                 optimizer: sgd(lr: 2.0), schedule: constant, clip_grad: 0.25, parallel: fsdp }
"""


def test_fsdp_clips_the_gradient_as_one_process_does(project, env_cache):
    (project / "clipped.lmspec").write_text(CLIPPED)
    done = cli(project, "run", "clipped.lmspec", "--nproc", "2", "--out", "clipped-two", "--plain")
    assert done.returncode == 0, done.stderr
    one = run(project / "clipped.lmspec", out=project / "clipped-one", progress=quiet()).path
    two = project / "clipped-two"
    norms_one, norms_two = _losses(one, "grad_norm"), _losses(two, "grad_norm")
    assert len(norms_one) == len(norms_two) == 6 and min(norms_one) > 0.25  # every step was clipped
    assert max(abs(a - b) / a for a, b in zip(norms_one, norms_two)) < 1e-4
    ones, twos = _losses(one), _losses(two)
    assert max(abs(a - b) for a, b in zip(ones, twos)) < 1e-5 and ones[-1] < ones[0]  # clipped, it still trains
    assert _gap(_final(one), _final(two)) < 1e-5


# ----------------------------------------------------------------------------- resuming


def test_a_killed_rank_resumes_to_the_uninterrupted_weights(project, killed, two):
    copy = project / "killed-2"
    shutil.copytree(killed, copy)
    done = cli(project, "run", "--resume", str(copy), "--nproc", "2", "--plain")
    assert done.returncode == 0, done.stderr
    assert "resuming from checkpoint step-0000010" in done.stdout
    reference, resumed = _final(two), _final(copy)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)  # bit for bit
    strip = lambda ms: [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in ms]  # noqa: E731
    assert strip(open_run(copy).metrics("pretrain")) == strip(open_run(two).metrics("pretrain"))


def test_a_sharded_run_resumes_in_one_process_without_unpickling(project, killed, two, env_cache, monkeypatch):
    copy = project / "killed-1"
    shutil.copytree(killed, copy)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    resumed = resume(copy, progress=quiet())
    assert _gap(_final(two), _final(resumed.path)) < 1e-4
    assert max(abs(a - b) for a, b in zip(_losses(resumed.path), _losses(two))) < 1e-5
    assert resumed.manifest["world_sizes"] == [2, 1]


def test_a_one_process_run_resumes_sharded_with_two(project, one):
    out = project / "killed-one"
    done = cli(project, "run", "spec.lmspec", "--out", str(out), LMSPEC_KILL_AT_STEP="7")
    assert done.returncode == -9, done.stderr
    done = cli(project, "run", "--resume", str(out), "--nproc", "2", "--plain")
    assert done.returncode == 0, done.stderr
    assert "resuming from checkpoint step-0000005" in done.stdout
    assert (_checkpoints(out) / "step-0000015" / "shards").is_dir()  # from there on, sharded
    assert _gap(_final(one), _final(out)) < 1e-4
    assert max(abs(a - b) for a, b in zip(_losses(out), _losses(one))) < 1e-5


# ----------------------------------------------------------------------------- damaged shards


def test_a_missing_or_corrupt_shard_is_named_and_the_checkpoint_before_used(project, killed):
    ckpts = project / "damaged"
    shutil.copytree(_checkpoints(killed), ckpts)
    (ckpts / "step-0000010" / "shards" / "rank-00001-of-00002.safetensors").unlink()
    warnings: list[str] = []
    path, tensors, _ = latest_checkpoint(ckpts, warn=warnings.append)
    assert path.name == "step-0000005" and isinstance(tensors, ShardedTensors)
    assert warnings == [f"checkpoint step-0000010 is corrupt, not using it: "
                        f"{ckpts / 'step-0000010' / 'shards' / 'rank-00001-of-00002.safetensors'}: missing"]
    # read without its checksums, the checkpoint still refuses a tensor with a hole
    held, _ = load_checkpoint(ckpts / "step-0000010", check=False)
    with pytest.raises(CorruptCheckpoint, match=r"shards: the shard of rank 1 \(of 2\) is missing"):
        held["model"]
    assert set(tensors) == {"model", "optimizer"} and tensors["model"]["embed.weight"].shape[1] == 32
    shard = ckpts / "step-0000005" / "shards" / "rank-00000-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match=f"{shard}: checksum mismatch"):
        load_checkpoint(ckpts / "step-0000005")


def _save_on_two_ranks(rank: int, directory: str) -> None:
    """Rank r of 2: a checkpoint of a sharded tensor, then one whose shards rank 1 cannot write."""
    import errno

    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from lmspec.runtime import checkpoint
    from lmspec.runtime.errors import RunError

    with gloo_group(rank, f"{directory}/rendezvous"):
        mesh = init_device_mesh("cpu", (2,))
        tensors = {"model.w": distribute_tensor(torch.arange(10.0).reshape(5, 2), mesh, [Shard(0)]),
                   "optimizer.w.step": torch.tensor(3.0)}
        checkpoint.save_checkpoint(Path(directory), 2, checkpoint.Sharded(tensors), {"step": 2})
        if rank == 1:
            def full(*args):
                raise OSError(errno.ENOSPC, "No space left on device")

            checkpoint._write_shards = full
        try:
            checkpoint.save_checkpoint(Path(directory), 3, checkpoint.Sharded(tensors), {"step": 3})
        except RunError as err:
            Path(directory, f"error-{rank}.txt").write_text(err.message)


def test_a_rank_that_cannot_write_its_shard_stops_every_rank(tmp_path):
    # spawn's own processes, which end with the interpreter's shutdown: where gloo's threads aborted
    # a worker at exit (distributed.leave_process_group)
    torch.multiprocessing.spawn(_save_on_two_ranks, args=(str(tmp_path),), nprocs=2)
    said = "rank 1 could not write its shards of checkpoint step-0000003: No space left on device"
    assert [(tmp_path / f"error-{r}.txt").read_text() for r in (0, 1)] == [said, said]
    assert [p.name for p in sorted(tmp_path.glob("step-*"))] == ["step-0000002", "step-0000003.tmp"]
    # the checkpoint written reads back whole in this process (rank 1's rows 3..4 from its file)
    tensors, state = load_checkpoint(tmp_path / "step-0000002")
    assert state == {"step": 2} and set(tensors) == {"model", "optimizer"}
    assert torch.equal(tensors["model"]["w"], torch.arange(10.0).reshape(5, 2))
    assert tensors["optimizer"] == {"w.step": torch.tensor(3.0)}


def test_auto_resolves_from_the_per_device_estimate(monkeypatch):
    """parallel: auto is fsdp on GPUs a stage fits only sharded, ddp otherwise and on the CPU."""
    import types

    import torch

    from lmspec.compiler.api import check_text
    from lmspec.runtime import distributed

    text = """lmspec 1
model m { vocab: 50_000, context: 512, layers: 12, d_model: 1024, heads: 16 }
data d { source: builtin("tiny-stories") }
train t { model: m, objective: clm, data: d, steps: 10, batch: 8 }
"""
    report = check_text(text, "auto.lmspec")
    assert report.ok
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, local_rank=0, size=2))
    monkeypatch.setattr(distributed, "_min_over_ranks", lambda value: value)
    cuda = torch.device("cuda", 0)

    def gpu(total):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=total))

    gpu(80 * 10**9)
    assert distributed.resolve_parallel(report, "t", "auto", cuda) == "ddp"
    gpu(4 * 10**9)  # ~4.8 GB replicated (0.2B parameters, AdamW), about half of it sharded over 2
    assert distributed.resolve_parallel(report, "t", "auto", cuda) == "fsdp"
    assert distributed.resolve_parallel(report, "t", "ddp", cuda) == "ddp"
    assert distributed.resolve_parallel(report, "t", "auto", torch.device("cpu")) == "ddp"
