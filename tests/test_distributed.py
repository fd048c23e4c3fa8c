"""Several processes, one run (DDP through torch.distributed, gloo on CPU): `lmspec run --nproc 2`
and torchrun give one process's losses for the same global batch, a rank that dies is named and
the run resumes with any number of processes, and what cannot work is said before anything runs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmspec.diagnostics import LmspecError
from lmspec.runtime import distributed, engine
from lmspec.runtime.api import open_run, resume, run
from lmspec.runtime.errors import RunError
from lmspec.runtime.objectives.clm import CausalLM
from run_support import cli as run_cli
from run_support import env, final_weights, losses, quiet, write_project
from conftest import gloo_group, spawn


# The classifier head no objective trains (LMS096) is there on purpose: DDP waits for the
# gradient of every parameter unless the stage leaves the unreached ones out.
SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
model m { vocab: tok.vocab_size, context: 32, layers: 2, d_model: 32, heads: 4, position: rope, norm: rmsnorm,
          activation: swiglu, bias: false, tie_embeddings: true, dropout: 0.0, head: [lm, classifier(classes: 2)] }
train pretrain { model: m, objective: clm, data: d, steps: 20, batch: 8, grad_accum: 2, eval_every: 10,
                 checkpoint_every: 5, log_every: 1, samples: 1, optimizer: adamw(lr: 3e-3, weight_decay: 0.1) }
"""


def _write_project(path: Path) -> Path:
    return write_project(path, SPEC)


def _env(project: Path, **extra) -> dict:
    return env(project, **extra)


def cli(project: Path, *args, **extra):
    return run_cli(project, *args, timeout=120, **extra)


_final, _losses = final_weights, losses


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _write_project(tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def two_processes(project):
    """The spec trained by `lmspec run --nproc 2`: the reference of the tests below."""
    out = project / "two"
    done = cli(project, "run", "spec.lmspec", "--nproc", "2", "--out", str(out), "--plain")
    assert done.returncode == 0, done.stderr
    return out, done


@pytest.fixture(scope="module")
def killed(project):
    """A 2-process run whose rank 1 was SIGKILLed right after step 12 (checkpoints at 5 and 10)."""
    out = project / "killed"
    done = cli(project, "run", "spec.lmspec", "--nproc", "2", "--out", str(out), "--plain",
               LMSPEC_KILL_AT_STEP="12", LMSPEC_KILL_RANK="1")
    return out, done


@pytest.fixture
def env_cache(project, monkeypatch):
    monkeypatch.setenv("LMSPEC_CACHE", str(project / "cache"))
    monkeypatch.chdir(project)


# ----------------------------------------------------------------------------- same global batch, same losses


def test_two_processes_give_the_losses_of_one(project, two_processes, env_cache):
    out, done = two_processes
    one = run(project / "spec.lmspec", out=project / "one", progress=quiet())
    two = open_run(out)
    ones, twos = _losses(one.path), _losses(out)
    assert len(ones) == len(twos) == 20
    assert max(abs(a - b) for a, b in zip(ones, twos)) < 1e-5
    assert max(abs(a - b) for a, b in zip(_losses(one.path, "eval_loss"), _losses(out, "eval_loss"))) < 1e-5
    assert ones[-1] < ones[0] - 0.5  # it trained: the figures compared are not two constants
    # tokens count both ranks' share; rank 0 alone wrote one line per step and one sample per evaluation
    assert [m["tokens"] for m in two.metrics("pretrain")] == [m["tokens"] for m in one.metrics("pretrain")]
    assert [m["step"] for m in two.samples("pretrain")] == [10, 20]
    assert two.manifest["world_size"] == 2 and two.status("pretrain")["world_size"] == 2
    assert done.stdout.count("stage pretrain: 20 steps") == 1 and "pretrain step 20/20" in done.stdout


def test_torchrun_runs_the_same_workers(project, two_processes):
    out = project / "torchrun"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lmspec", "run", "spec.lmspec", "--out", str(out), "--plain",
                           "--set", "pretrain.steps=4"],
                          capture_output=True, text=True, env=_env(project, OMP_NUM_THREADS="1"), cwd=project,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    # a constant learning rate: the first 4 steps of a 4-step run are those of the 20-step one
    assert _losses(out) == _losses(two_processes[0])[:4]
    assert open_run(out).manifest["world_size"] == 2


# ----------------------------------------------------------------------------- a rank that dies


def test_a_killed_rank_is_named_and_the_run_stops_with_its_checkpoint(killed):
    out, done = killed
    assert done.returncode == 1
    assert "rank 1 of 2 was killed by SIGKILL" in done.stderr, done.stderr
    assert f"lmspec run --resume {out}" in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "rank 1 of 2 was killed by SIGKILL" in manifest["failure"]
    assert not (out / "stages" / "pretrain" / "final").exists()
    assert (out / "stages" / "pretrain" / "checkpoints" / "step-0000010").is_dir()


def test_resuming_with_two_processes_gives_the_uninterrupted_weights(project, killed, two_processes):
    copy = project / "killed-2"
    shutil.copytree(killed[0], copy)
    done = cli(project, "run", "--resume", str(copy), "--nproc", "2", "--plain")
    assert done.returncode == 0, done.stderr
    assert "resuming from checkpoint step-0000010" in done.stdout
    reference, resumed = _final(two_processes[0]), _final(copy)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)  # bit for bit
    strip = lambda ms: [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in ms]  # noqa: E731
    assert strip(open_run(copy).metrics("pretrain")) == strip(open_run(two_processes[0]).metrics("pretrain"))


def test_a_two_process_run_resumes_in_one_process(project, killed, two_processes, env_cache):
    copy = project / "killed-1"
    shutil.copytree(killed[0], copy)
    resumed = resume(copy, progress=quiet())
    reference, weights = _final(two_processes[0]), _final(resumed.path)
    assert max(float((reference[k] - weights[k]).abs().max()) for k in reference) < 1e-4
    assert max(abs(a - b) for a, b in zip(_losses(resumed.path), _losses(two_processes[0]))) < 1e-5
    assert resumed.manifest["world_sizes"] == [2, 1]


def test_a_one_process_run_resumes_with_two(project, two_processes):
    out = project / "killed-one"
    done = cli(project, "run", "spec.lmspec", "--out", str(out), LMSPEC_KILL_AT_STEP="7")
    assert done.returncode == -9, done.stderr
    done = cli(project, "run", "--resume", str(out), "--nproc", "2", "--plain")
    assert done.returncode == 0, done.stderr
    assert "resuming from checkpoint step-0000005" in done.stdout
    reference, weights = _final(two_processes[0]), _final(out)
    assert max(float((reference[k] - weights[k]).abs().max()) for k in reference) < 1e-4
    assert max(abs(a - b) for a, b in zip(_losses(out), _losses(two_processes[0]))) < 1e-5


def test_an_error_in_a_worker_is_named_with_its_rank(project):
    (project / "taken").mkdir(exist_ok=True)
    (project / "taken" / "precious.txt").write_text("keep")
    done = cli(project, "run", "spec.lmspec", "--nproc", "2", "--out", "taken")
    assert done.returncode == 1
    assert "lmspec: error: rank 0 of 2 stopped: taken already exists; lmspec never overwrites a run" in done.stderr
    assert "= help: resume it with `lmspec run --resume taken`" in done.stderr
    assert (project / "taken" / "precious.txt").read_text() == "keep"


# ----------------------------------------------------------------------------- said before anything runs


def test_a_world_size_that_does_not_divide_the_batch_is_a_located_error(project, env_cache):
    with pytest.raises(LmspecError) as err:
        run("spec.lmspec", nproc=3, out="never", progress=quiet())
    d = err.value.diagnostics[0]
    assert d.code == "LMS089" and (d.span.line, d.span.col) == (6, 71)
    assert d.message == ("batch (8) of stage 'pretrain' does not split over 3 processes x grad_accum (2) = 6 equal "
                         "micro-batches")
    assert d.help.startswith("use batch: 6 or batch: 12 (a multiple of 2 x 3), or run with --nproc 1, 2, 4;")
    assert not (project / "never").exists()


def test_the_stage_says_it_too_when_no_check_saw_the_world_size():
    with pytest.raises(RunError, match=r"batch \(8\) does not split over 3 processes x grad_accum \(2\) = 6"):
        distributed.split_batch(8, 2, 3, stage="pretrain")
    assert distributed.split_batch(8, 2, 2, stage="pretrain") == 2


def test_a_port_in_use_is_refused_before_a_worker_starts(project, env_cache):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RunError, match=f"port {port} is in use on this machine") as err:
            run("spec.lmspec", nproc=2, port=port, out="never", progress=quiet())
    assert "--port" in err.value.help and not (project / "never").exists()


def test_nccl_needs_cuda(project, env_cache):
    with pytest.raises(RunError, match="--backend nccl needs CUDA devices") as err:
        run("spec.lmspec", nproc=2, backend="nccl", device="cpu", out="never", progress=quiet())
    assert "gloo" in err.value.help and not (project / "never").exists()


def test_nproc_inside_torchrun_is_refused(project, env_cache, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RunError, match="--nproc 2 inside a worker of a launcher that already started 2"):
        run("spec.lmspec", nproc=2, out="never", progress=quiet())


def test_cli_usage(project):
    done = cli(project, "run", "spec.lmspec", "--port", "29500")
    assert done.returncode == 2 and "--port is the rendezvous port of --nproc N workers" in done.stderr
    done = cli(project, "run", "spec.lmspec", "--nproc", "0")
    assert done.returncode == 2 and "must be >= 1" in done.stderr


# ----------------------------------------------------------------------------- the engine across ranks


def _micro_batches(seed: int) -> list[dict]:
    """Four micro-batches whose loss tokens differ a lot: rank 0 takes 0 and 2 (64 loss tokens),
    rank 1 takes 1 and 3 (6)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for kept in (16, 2, 16, 1):
        ids = torch.randint(0, 50, (2, 16), generator=g)
        labels = torch.randint(0, 50, (2, 16), generator=g)
        labels[:, kept:] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.out = torch.nn.Linear(16, 50)

    def forward(self, input_ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.out(torch.tanh(self.embed(input_ids))))


def _step(model, batches, no_sync=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    terms = [(1.0, CausalLM(None, None))]
    r = engine.train_step(model, opt, batches, terms, lr=0.5, clip_grad=None,
                          precision=engine.resolve_precision("fp32", torch.device("cpu")), no_sync=no_sync)
    return r, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rank(rank: int, directory: str) -> None:
    from safetensors.torch import save_file

    with gloo_group(rank, f"{directory}/rendezvous"):
        torch.manual_seed(0)
        model = _Tiny()
        ddp = distributed.data_parallel(model, torch.device("cpu"))
        batches = _micro_batches(1)
        r, weights = _step(ddp, [batches[m * 2 + rank] for m in range(2)], no_sync=ddp.no_sync)  # rank r: 2m + r
        if rank == 0:
            save_file({k.removeprefix("module."): v for k, v in weights.items()}, f"{directory}/weights.safetensors")
            Path(directory, "result.json").write_text(json.dumps({"loss": r.loss, "tokens": r.tokens}))
        del ddp, model  # their reference cycles collected while the group exists


def test_the_loss_is_normalised_by_the_units_of_every_rank(tmp_path):
    from safetensors.torch import load_file

    spawn(_rank, str(tmp_path))
    torch.manual_seed(0)
    r, weights = _step(_Tiny(), _micro_batches(1))
    two = json.loads((tmp_path / "result.json").read_text())
    assert two["tokens"] == r.tokens == 4 * 2 * 16
    assert abs(two["loss"] - r.loss) < 1e-6
    ddp_weights = load_file(str(tmp_path / "weights.safetensors"))
    assert all(torch.allclose(weights[k], ddp_weights[k], atol=1e-6) for k in weights)
    # each rank normalising by its own tokens, and DDP averaging, would move the weights elsewhere
    naive = []
    for share in ((0, 2), (1, 3)):
        torch.manual_seed(0)
        naive.append(_step(_Tiny(), [_micro_batches(1)[i] for i in share])[1])
    averaged = (naive[0]["out.weight"] + naive[1]["out.weight"]) / 2
    assert (averaged - weights["out.weight"]).abs().max() > 1e-3


def test_the_root_cause_is_named_not_the_ranks_that_were_stopped_with_it(tmp_path, monkeypatch):
    import signal

    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    def failure(rank: int, exitcode: int, message: str | None = None, kind: str = "error") -> ProcessFailure:
        path = tmp_path / f"error-{rank}.json"
        if message is not None:
            monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
            distributed.report_failure(message, "do this", kind=kind)
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(path))

    stopped = failure(0, -signal.SIGTERM)  # the agent stops the survivors with SIGTERM
    err = distributed._describe_failures({0: stopped, 1: failure(1, 1, "the data is gone"),
                                          2: failure(2, 1, "lost the other ranks", kind="lost_peers")}, 3, tmp_path)
    assert (err.message, err.help) == ("rank 1 of 3 stopped: the data is gone", "do this")
    err = distributed._describe_failures({0: failure(3, 1, "lost the other ranks", kind="lost_peers"),
                                          1: failure(4, -signal.SIGKILL)}, 2, tmp_path)
    assert err.message == "rank 1 of 2 was killed by SIGKILL (pid 104); the run stopped (rank 0 stopped with it)"
    assert err.help == f"resume with `lmspec run --resume {tmp_path}` (with any --nproc)"
