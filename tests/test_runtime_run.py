"""`lmspec run` end to end on tiny models: the run directory, open_run, resume after SIGKILL
(bit-identical), changed specs, corrupt checkpoints, Ctrl-C, non-finite losses, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmspec.diagnostics import LmspecError
from lmspec.runtime import engine
from lmspec.runtime.api import open_run, resume, run
from lmspec.runtime.errors import RunError
from lmspec.runtime.progress import Progress

ROOT = Path(__file__).resolve().parent.parent

SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
model m { vocab: tok.vocab_size, context: 32, layers: 2, d_model: 32, heads: 4, position: rope,
          norm: rmsnorm, activation: swiglu, bias: false, tie_embeddings: true, dropout: 0.1 }
train pretrain { model: m, objective: clm, data: d, steps: 12, batch: 4, grad_accum: 2, eval_every: 4,
                 checkpoint_every: 3, log_every: 2, optimizer: adamw(lr: 3e-3, weight_decay: 0.1),
                 schedule: cosine(warmup: 2) }
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A spec beside its corpus, and a private data cache."""
    words = "the cat sat on a mat and then it ran to the park where a dog was happy".split()
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (40,), generator=g)) for _ in range(60)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs))
    (tmp_path / "spec.lmspec").write_text(SPEC)
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path / "cache"))
    return tmp_path


def quiet() -> Progress:
    return Progress(quiet=True)


def _env(project):
    return {**os.environ, "LMSPEC_CACHE": str(project / "cache"), "PYTHONPATH": str(ROOT)}


def cli(*args, env=None, cwd=None):
    """`lmspec ARGS` in a new process: for what must be a process of its own (one that is killed)."""
    return subprocess.run([sys.executable, "-m", "lmspec", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def main(*args, env=None) -> subprocess.CompletedProcess:
    """`lmspec ARGS` through `lmspec.cli.main` in this process, under the environment `env`: what
    `cli` gives, without seconds of importing torch afresh each time."""
    import contextlib
    import io

    from lmspec.cli import main as lmspec_main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = lmspec_main(list(args))
            except SystemExit as exit:  # argparse's usage errors
                code = exit.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["lmspec", *args], code, out.getvalue(), err.getvalue())


# ----------------------------------------------------------------------------- the run directory


def test_a_run_writes_the_documented_layout(project):
    r = run(project / "spec.lmspec", out=project / "run", progress=quiet())
    d = r.path
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["versions"]["torch"] == torch.__version__
    assert manifest["device"] == "cpu" and manifest["started"] and manifest["finished"]
    assert (d / "spec" / "spec.lmspec").read_text() == SPEC
    assert len((d / "spec.sha256").read_text().strip()) == 64
    stage = d / "stages" / "pretrain"
    lines = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 4, 6, 8, 10, 12]
    assert {"stage", "step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens"} <= lines[0].keys()
    evals = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evals] == [4, 8, 12]
    assert {"perplexity", "bits_per_byte"} <= evals[0].keys()
    assert evals[-1]["perplexity"] == pytest.approx(2.718281828 ** evals[-1]["eval_loss"], rel=1e-6)
    assert lines[-1]["tokens"] == 12 * 4 * 32
    assert lines[-1]["loss"] < lines[0]["loss"]
    samples = [json.loads(line) for line in (stage / "samples.jsonl").read_text().splitlines()]
    assert samples and {"stage", "step", "prompt", "text"} <= samples[0].keys()
    assert [p.name for p in (stage / "checkpoints").iterdir()] and (stage / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (stage / "final").iterdir()) == ["arch.json", "artifacts.json", "checksums.json",
                                                                   "model.safetensors",
                                                                   "tokenizer"]
    assert r.status("pretrain")["status"] == "finished"


def test_open_run_gives_the_trained_model_and_tokenizer(project):
    run(project / "spec.lmspec", out=project / "run", progress=quiet())
    r = open_run(project / "run")
    model = r.model("pretrain")
    assert isinstance(model, torch.nn.Module) and not model.training
    tok = r.tokenizer("pretrain")
    ids = tok.encode("the cat")
    assert ids == list("the cat".encode()) and tok.decode(ids) == "the cat"
    from safetensors.torch import load_file

    final = load_file(str(project / "run" / "stages" / "pretrain" / "final" / "model.safetensors"))
    assert torch.equal(model.embed.weight, final["embed.weight"])
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 262)


def test_an_existing_run_directory_is_never_overwritten(project):
    (project / "run").mkdir()
    (project / "run" / "precious.txt").write_text("keep")
    with pytest.raises(RunError, match="already exists"):
        run(project / "spec.lmspec", out=project / "run", progress=quiet())
    assert (project / "run" / "precious.txt").read_text() == "keep"


def test_a_spec_with_errors_runs_nothing(project):
    (project / "bad.lmspec").write_text(SPEC.replace("steps: 12", "stpes: 12"))
    with pytest.raises(LmspecError) as err:
        run(project / "bad.lmspec", out=project / "run", progress=quiet())
    assert err.value.diagnostics[0].code == "LMS041"
    assert not (project / "run").exists()


def test_set_overrides_are_checked_and_recorded(project):
    r = run(project / "spec.lmspec", overrides=["pretrain.steps=2"], out=project / "run", progress=quiet())
    assert r.status("pretrain")["step"] == 2
    assert r.manifest["overrides"] == ["pretrain.steps=2"]
    with pytest.raises(LmspecError) as err:
        run(project / "spec.lmspec", overrides=["pretrain.steps=0"], out=project / "run2", progress=quiet())
    assert err.value.diagnostics[0].code == "LMS043" and err.value.diagnostics[0].span.file == "<--set>"


# ----------------------------------------------------------------------------- resume


def _final_bytes(run_dir: Path) -> bytes:
    return (run_dir / "stages" / "pretrain" / "final" / "model.safetensors").read_bytes()


def test_sigkill_then_resume_is_bit_identical(project):
    reference = run(project / "spec.lmspec", out=project / "reference", progress=quiet())
    env = {**_env(project), "LMSPEC_KILL_AT_STEP": "8"}
    killed = cli("run", str(project / "spec.lmspec"), "--out", str(project / "killed"), env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    status = json.loads((project / "killed" / "stages" / "pretrain" / "status.json").read_text())
    assert status["status"] == "running" and not (project / "killed" / "stages" / "pretrain" / "final").exists()
    resumed = resume(project / "killed", progress=quiet())
    assert _final_bytes(resumed.path) == _final_bytes(reference.path)
    # the metrics of the resumed run are those of an uninterrupted one, step for step
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("tokens_per_s",)} for m in ms]  # noqa: E731
    assert strip(resumed.metrics("pretrain")) == strip(reference.metrics("pretrain"))


def test_a_corrupt_checkpoint_is_named_and_the_one_before_used(project, capsys):
    reference = run(project / "spec.lmspec", out=project / "reference", progress=quiet())
    env = {**_env(project), "LMSPEC_KILL_AT_STEP": "10"}
    cli("run", str(project / "spec.lmspec"), "--out", str(project / "killed"), env=env)
    ckpts = sorted((project / "killed" / "stages" / "pretrain" / "checkpoints").iterdir())
    assert ckpts[-1].name == "step-0000009"
    weights = ckpts[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])  # truncated
    messages = []
    progress = Progress(quiet=True)
    progress.message = messages.append
    resumed = resume(project / "killed", progress=progress)
    assert any("step-0000009 is corrupt" in m and "model.safetensors" in m for m in messages), messages
    assert any("resuming from checkpoint step-0000006" in m for m in messages), messages
    assert _final_bytes(resumed.path) == _final_bytes(reference.path)


def test_resuming_a_changed_spec_is_refused_with_a_diff_unless_forced(project):
    env = {**_env(project), "LMSPEC_KILL_AT_STEP": "5"}
    cli("run", str(project / "spec.lmspec"), "--out", str(project / "killed"), env=env)
    (project / "spec.lmspec").write_text(SPEC.replace("lr: 3e-3", "lr: 1e-3"))
    with pytest.raises(RunError) as err:
        resume(project / "killed", progress=quiet())
    text = str(err.value)
    lines = text.splitlines()
    assert "the spec changed" in text
    assert any(l.startswith("-") and '"lr": 0.003' in l for l in lines), text
    assert any(l.startswith("+") and '"lr": 0.001' in l for l in lines), text
    assert "--force" in text
    r = resume(project / "killed", force=True, progress=quiet())
    assert r.status("pretrain")["status"] == "finished"


def test_resuming_a_finished_run_does_nothing(project):
    r = run(project / "spec.lmspec", out=project / "run", progress=quiet())
    before = _final_bytes(r.path)
    messages = []
    progress = Progress(quiet=True)
    progress.message = messages.append
    resume(r.path, progress=progress)
    assert messages == [f"{r.path}: this run has finished; nothing to do"]
    assert _final_bytes(r.path) == before


def test_resume_of_a_directory_that_is_not_a_run(project):
    (project / "empty").mkdir()
    with pytest.raises(RunError, match="not an lmspec run directory"):
        resume(project / "empty", progress=quiet())
    with pytest.raises(RunError, match="does not exist"):
        resume(project / "nowhere", progress=quiet())


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(project, monkeypatch):
    reference = run(project / "spec.lmspec", out=project / "reference", progress=quiet())
    from lmspec.runtime.stages.train import TrainStage

    real = TrainStage.step

    def step(self, i):
        out = real(self, i)
        if i == 4:  # during step 5: the flag is read once the step is done
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(TrainStage, "step", step)
    with pytest.raises(RunError) as err:
        run(project / "spec.lmspec", out=project / "run", progress=quiet())
    assert "stopped after step 5 of 12" in str(err.value) and f"--resume {project / 'run'}" in str(err.value)
    ckpts = [p.name for p in (project / "run" / "stages" / "pretrain" / "checkpoints").iterdir()]
    assert "step-0000005" in ckpts
    assert json.loads((project / "run" / "manifest.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(TrainStage, "step", real)
    resumed = resume(project / "run", progress=quiet())
    assert _final_bytes(resumed.path) == _final_bytes(reference.path)


def test_a_non_finite_loss_stops_with_stage_and_step(project, monkeypatch):
    real = engine.train_step

    def train_step(*args, **kwargs):
        r = real(*args, **kwargs)
        if kwargs["lr"] < 0:  # never; the patch below decides
            return r
        train_step.calls += 1
        if train_step.calls == 7:
            r.finite, r.loss = False, float("nan")
        return r

    train_step.calls = 0
    monkeypatch.setattr(engine, "train_step", train_step)
    with pytest.raises(RunError) as err:
        run(project / "spec.lmspec", out=project / "run", progress=quiet())
    text = str(err.value)
    assert "stage 'pretrain' got a non-finite loss at step 7" in text and "lower the learning rate" in text
    status = json.loads((project / "run" / "stages" / "pretrain" / "status.json").read_text())
    assert status["status"] == "failed"
    assert [p.name for p in (project / "run" / "stages" / "pretrain" / "checkpoints").iterdir()] == ["step-0000003",
                                                                                                   "step-0000006"]


# ----------------------------------------------------------------------------- bad data


def test_a_missing_data_file_is_a_clear_error(project):
    (project / "corpus.txt").unlink()
    with pytest.raises((RunError, LmspecError)) as err:
        run(project / "spec.lmspec", out=project / "run", progress=quiet())
    assert "corpus.txt" in str(err.value) or "corpus.txt" in str(getattr(err.value, "diagnostics", ""))


# ----------------------------------------------------------------------------- the command line


def test_cli_run_show_and_sample(project):
    out = project / "run"
    r = main("run", str(project / "spec.lmspec"), "--out", str(out), "--set", "pretrain.steps=4", env=_env(project))
    assert r.returncode == 0, r.stderr
    assert "pretrain step 4/4" in r.stdout and "finished" in r.stdout and "loss.png" in r.stdout
    shown = main("show", str(out), env=_env(project))
    assert shown.returncode == 0 and "pretrain" in shown.stdout and "4/4" in shown.stdout
    sampled = main("sample", str(out), "--prompt", "the cat", "--max-tokens", "10", "--seed", "3", env=_env(project))
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("the cat")
    again = main("sample", str(out), "--prompt", "the cat", "--max-tokens", "10", "--seed", "3", env=_env(project))
    assert again.stdout == sampled.stdout
    piped = subprocess.run([sys.executable, "-m", "lmspec", "sample", str(out), "--prompt", "-", "--max-tokens", "5"],
                           input="the\na dog\n", capture_output=True, text=True, env=_env(project), timeout=300)
    lines = piped.stdout.splitlines()
    assert piped.returncode == 0 and lines[0].startswith("the") and lines[1].startswith("a dog")


def test_cli_errors_are_one_clear_message(project):
    env = _env(project)
    r = main("run", str(project / "nope.lmspec"), env=env)
    assert r.returncode == 1 and "nope.lmspec: no such file" in r.stderr and "Traceback" not in r.stderr
    (project / "taken").mkdir()
    (project / "taken" / "x").write_text("")
    r = main("run", str(project / "spec.lmspec"), "--out", str(project / "taken"), env=env)
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr
    r = main("run", "--resume", str(project), env=env)
    assert r.returncode == 1 and "not an lmspec run directory" in r.stderr
    r = main("run", str(project / "spec.lmspec"), "--set", "pretrain.stpes=3", env=env)
    assert r.returncode == 1 and "LMS041" in r.stderr and "<--set>" in r.stderr


def test_a_full_disk_stops_with_a_clear_message_and_keeps_what_was_written(project, monkeypatch):
    import errno

    from lmspec.runtime import loop

    real = loop.save_checkpoint

    def save(directory, step, *args, **kwargs):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return real(directory, step, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    with pytest.raises(RunError) as err:
        run(project / "spec.lmspec", out=project / "run", progress=quiet())
    assert "No space left on device" in str(err.value) and "--resume" in str(err.value)
    stage = project / "run" / "stages" / "pretrain"
    assert [p.name for p in (stage / "checkpoints").iterdir()] == ["step-0000003"]
    assert [m["step"] for m in open_run(project / "run").metrics("pretrain")][-1] == 6
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert resume(project / "run", progress=quiet()).status("pretrain")["status"] == "finished"


def test_an_output_path_that_cannot_be_a_directory(project):
    (project / "afile").write_text("")
    with pytest.raises(RunError, match="cannot create the run directory"):
        run(project / "spec.lmspec", out=project / "afile" / "run", progress=quiet())


def test_records_longer_than_the_context_are_found_before_the_first_step(project):
    lines = [json.dumps({"prompt": "say hi ", "response": "hi"})] * 20
    lines[7] = json.dumps({"prompt": "x" * 100, "response": "y"})
    (project / "chat.jsonl").write_text("\n".join(lines) + "\n")
    (project / "sft.lmspec").write_text(SPEC.replace('text("corpus.txt")', 'jsonl("chat.jsonl")')
                                        .replace("objective: clm", "objective: sft"))
    with pytest.raises(RunError) as err:
        run(project / "sft.lmspec", out=project / "run", progress=quiet())
    assert "holds 1 example longer than stage 'pretrain' feeds: up to 101 tokens, and seq_len is 32" in str(err.value)
    assert "seq_len" in err.value.help


def test_the_live_display_and_tensorboard_without_the_package(project, monkeypatch):
    import io

    buf = io.StringIO()
    run(project / "spec.lmspec", out=project / "run", progress=Progress(live=True, stream=buf))
    assert "pretrain" in buf.getvalue() and "12/12" in buf.getvalue()
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(RunError, match="needs the tensorboard package"):
        run(project / "spec.lmspec", out=project / "run2", progress=quiet(), tensorboard=True)


def test_only_runs_a_stage_and_what_it_needs(project):
    two = SPEC + ("train more { model: m from pretrain, objective: clm, data: d, steps: 2, batch: 2 }\n"
                  "train other { model: m, objective: clm, data: d, steps: 2, batch: 2 }\n")
    (project / "two.lmspec").write_text(two)
    r = run(project / "two.lmspec", out=project / "run", only="more", progress=quiet())
    assert r.manifest["stages"] == ["pretrain", "more"]
    assert r.status("more")["status"] == "finished" and r.status("other")["status"] == "pending"
    with pytest.raises(RunError, match="no stage named 'mroe'") as err:
        run(project / "two.lmspec", out=project / "run2", only="mroe", progress=quiet())
    assert "did you mean 'more'" in err.value.help


# ----------------------------------------------------------------------------- resume, the hard cases


def test_resume_counts_tokens_from_the_checkpoint_not_the_last_log_line(project):
    cadence = ["pretrain.log_every=4"]  # logs at 1, 4, 8, 12; checkpoints at 3, 6, 9
    reference = run(project / "spec.lmspec", overrides=cadence, out=project / "reference", progress=quiet())
    env = {**_env(project), "LMSPEC_KILL_AT_STEP": "pretrain:7"}
    cli("run", str(project / "spec.lmspec"), "--out", str(project / "killed"), "--set", cadence[0], env=env)
    resumed = resume(project / "killed", progress=quiet())
    assert [(m["step"], m["tokens"]) for m in resumed.metrics("pretrain")] == \
        [(m["step"], m["tokens"]) for m in reference.metrics("pretrain")]


def test_checkpoints_after_the_one_resumed_from_are_set_aside(project):
    reference = run(project / "spec.lmspec", overrides=["pretrain.keep_checkpoints=1"], out=project / "reference",
                    progress=quiet())
    env = {**_env(project), "LMSPEC_KILL_AT_STEP": "10"}
    cli("run", str(project / "spec.lmspec"), "--out", str(project / "killed"), "--set", "pretrain.keep_checkpoints=1",
        env=env)
    ckpts = project / "killed" / "stages" / "pretrain" / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step-0000009"]
    (ckpts / "step-0000009" / "state.json").write_text("{}")  # corrupt: its checksum no longer holds
    env["LMSPEC_KILL_AT_STEP"] = "7"
    killed_again = subprocess.run([sys.executable, "-m", "lmspec", "run", "--resume", str(project / "killed")],
                                  capture_output=True, text=True, env=env, timeout=300)
    assert "set aside checkpoint step-0000009" in killed_again.stdout, killed_again.stdout
    assert [p.name for p in ckpts.iterdir() if p.name != "unused"] == ["step-0000006"]  # the good one survives
    resumed = resume(project / "killed", progress=quiet())
    assert _final_bytes(resumed.path) == _final_bytes(reference.path)


TWO = SPEC + "train more { model: m from pretrain, objective: clm, data: d, steps: 4, batch: 2, checkpoint_every: 2 }\n"


def test_force_runs_a_changed_finished_stage_and_the_stages_after_it_again(project):
    (project / "two.lmspec").write_text(TWO)
    env = {**_env(project), "LMSPEC_KILL_AT_STEP": "more:3"}
    cli("run", str(project / "two.lmspec"), "--out", str(project / "run"), env=env)
    assert json.loads((project / "run" / "stages" / "pretrain" / "status.json").read_text())["status"] == "finished"
    messages = []
    progress = Progress(quiet=True)
    progress.message = messages.append
    r = resume(project / "run", force=True, overrides=["pretrain.steps=6"], progress=progress)
    assert "stage pretrain: its settings changed; it runs again from step 0 (--force)" in messages
    assert "stage more: its settings changed; it runs again from step 0 (--force)" in messages
    assert r.status("pretrain")["step"] == 6 and r.status("more")["status"] == "finished"
    assert r.manifest["forced"] and json.loads((r.path / "spec" / "resolved.json").read_text())[
        "blocks"]["pretrain"]["steps"] == 6
    with pytest.raises(RunError, match="--set on --resume changes the run's spec"):
        resume(project / "run", overrides=["pretrain.steps=7"], progress=quiet())


def test_a_forced_resume_trains_under_the_new_optimizer_settings(project):
    env = {**_env(project), "LMSPEC_KILL_AT_STEP": "7"}
    cli("run", str(project / "spec.lmspec"), "--out", str(project / "run"), env=env)
    from lmspec.runtime.stages.train import TrainStage

    seen = {}
    real = TrainStage.load_state_dict

    def load(self, tensors, state):
        real(self, tensors, state)
        seen["wd"] = self.optimizer.param_groups[0]["weight_decay"]

    TrainStage.load_state_dict = load
    try:
        resume(project / "run", force=True, overrides=["pretrain.optimizer=adamw(lr: 3e-3, weight_decay: 0.5)"],
               progress=quiet())
    finally:
        TrainStage.load_state_dict = real
    assert seen["wd"] == 0.5  # not the checkpoint's 0.1


def test_ctrl_c_in_the_last_step_of_a_stage_stops_before_the_next(project, monkeypatch):
    (project / "two.lmspec").write_text(TWO)
    from lmspec.runtime.stages.train import TrainStage

    real = TrainStage.step

    def step(self, i):
        out = real(self, i)
        if self.name == "pretrain" and i == 11:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(TrainStage, "step", step)
    with pytest.raises(RunError, match="stage 'pretrain' finished; more did not start"):
        run(project / "two.lmspec", out=project / "run", progress=quiet())
    r = open_run(project / "run")
    assert r.status("pretrain")["status"] == "finished" and r.status("more")["status"] == "pending"
    assert r.manifest["status"] == "interrupted"


def test_a_run_in_use_cannot_be_resumed_twice_and_show_tells_a_dead_run(project):
    env = {**_env(project), "LMSPEC_KILL_AT_STEP": "5"}
    cli("run", str(project / "spec.lmspec"), "--out", str(project / "run"), env=env)
    shown = main("show", str(project / "run"), env=_env(project))
    assert "stopped (no process is running it: killed?)" in shown.stdout
    from lmspec.runtime.rundir import RunDir

    with RunDir.open(project / "run").lock():
        with pytest.raises(RunError, match="in use by another lmspec process"):
            resume(project / "run", progress=quiet())


def test_cli_usage_errors_exit_2(project):
    env = _env(project)
    assert main("run", env=env).returncode == 2
    assert main("run", str(project / "spec.lmspec"), "--resume", str(project), env=env).returncode == 2
    assert main("run", "--resume", str(project), "--only", "pretrain", env=env).returncode == 2
    assert main("run", str(project / "spec.lmspec"), "--force", env=env).returncode == 2
    assert main("sample", str(project), "--top-k", "0", env=env).returncode == 2


def test_the_spec_warnings_are_shown_before_it_runs(project):
    (project / "warn.lmspec").write_text(SPEC + 'data unused { source: builtin("tiny-reviews") }\n')
    messages = []
    progress = Progress(quiet=False, live=False)
    progress.message = messages.append
    run(project / "warn.lmspec", overrides=["pretrain.steps=1"], out=project / "run", progress=progress)
    assert "warning[LMS080]" in messages[0] and "'unused' is not used by any stage" in messages[0]


def test_compile_true_trains_the_same_model_through_torch_compile(project):
    """torch.compile (inductor, on the CPU: ~30 s of compilation) gives the eager losses."""
    few = ["pretrain.steps=3", "pretrain.eval_every=0", "pretrain.checkpoint_every=0", "m.dropout=0.0"]
    eager = run(project / "spec.lmspec", overrides=few, out=project / "eager", progress=quiet())
    compiled = run(project / "spec.lmspec", overrides=few + ["pretrain.compile=true"], out=project / "compiled",
                   progress=quiet())
    for a, b in zip(eager.metrics("pretrain"), compiled.metrics("pretrain")):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=1e-4)
