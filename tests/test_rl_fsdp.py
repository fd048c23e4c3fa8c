"""rl stages with `parallel: fsdp` (FSDP2, 2 gloo processes on the CPU): the policy and PPO's
value model are sharded, the rollouts run on the policy gathered whole on every rank (each rank
generates until its own responses end), and the updates run sharded. Against DDP on the same
2 ranks, which draws the same rollouts: the same figures and the same final weights. Sharded
checkpoints resume to the uninterrupted weights, and a run of 2 resumes in 1 process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from conftest import gloo_group, spawn

SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data stories { source: builtin("tiny-stories") }
model gpt { vocab: tok.vocab_size, context: 48, layers: 2, d_model: 32, heads: 2 }
train pre { model: gpt, objective: clm, data: stories, steps: 2, batch: 4, seq_len: 32, samples: 0 }
judge long { score: length }
rl align {
  policy: gpt from pre
  reward: long
  algorithm: grpo(group: 4)
  rollouts { prompts: stories.prefixes(tokens: 8, count: 40), per_step: 16, max_new_tokens: 10 }
  minibatch: 8
  steps: 3, eval_prompts: 4, log_every: 1, checkpoint_every: 2, optimizer: adamw(lr: 3e-3), samples: 1,
  parallel: PARALLEL
}
rl critic {
  policy: gpt from pre
  reward: long
  algorithm: ppo(epochs: 2)
  rollouts { prompts: stories.prefixes(tokens: 8, count: 40), per_step: 8, max_new_tokens: 8 }
  steps: 2, eval_prompts: 4, log_every: 1, checkpoint_every: 1, optimizer: adamw(lr: 3e-3), samples: 0,
  parallel: PARALLEL
}
rl single {
  policy: gpt from pre
  reward: long
  algorithm: rloo(k: 2)
  rollouts { prompts: stories.prefixes(tokens: 8, count: 40), per_step: 4, max_new_tokens: 6 }
  steps: 2, eval_prompts: 4, log_every: 1, checkpoint_every: 1, optimizer: adamw(lr: 3e-3), samples: 0,
  parallel: PARALLEL
}
"""


def _worker(rank: int, project: str, out: str, kill: str) -> None:

    from lmspec.runtime.api import run
    from lmspec.runtime.progress import Progress

    torch.set_num_threads(1)
    os.environ["LMSPEC_CACHE"] = str(Path(project) / "cache")
    if kill:  # rank 1 dies right after that step (and its checkpoint)
        os.environ.update(LMSPEC_KILL_AT_STEP=kill, LMSPEC_KILL_RANK="1")
    os.chdir(project)
    with gloo_group(rank, f"{project}/rendezvous-{out}"):
        run("spec.lmspec", out=out, progress=Progress(quiet=True))


def _spawn(project: Path, parallel: str, out: str, kill: str = "") -> Path:
    (project / "spec.lmspec").write_text(SPEC.replace("PARALLEL", parallel))
    spawn(_worker, str(project), out, kill)
    return project / out


def _metrics(run: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run / "stages" / stage / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path, stage: str, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(run / "stages" / stage / "final" / f"{name}.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    project = tmp_path_factory.mktemp("rl-fsdp")
    return project, _spawn(project, "ddp", "ddp"), _spawn(project, "fsdp", "fsdp")


def test_fsdp_gives_ddps_figures_and_weights(runs):
    _, ddp, fsdp = runs
    for stage in ("align", "critic", "single"):  # minibatches; PPO's value model; one update per step
        (checkpoint,) = (fsdp / "stages" / stage / "checkpoints").iterdir()
        assert (checkpoint / "shards").is_dir()  # sharded: every rank wrote its slices
        (checkpoint,) = (ddp / "stages" / stage / "checkpoints").iterdir()
        assert not (checkpoint / "shards").exists()
        a, b = _metrics(ddp, stage), _metrics(fsdp, stage)
        assert [m["step"] for m in a] == [m["step"] for m in b]
        for x, y in zip(a, b):
            for key in ("loss", "reward", "kl", "response_length"):
                assert abs(x[key] - y[key]) < 1e-5, (stage, x["step"], key)
        assert "eval_reward" in b[-1] and abs(a[-1]["eval_reward"] - b[-1]["eval_reward"]) < 1e-5
        for name in ("model", "value") if stage == "critic" else ("model",):
            wa, wb = _weights(ddp, stage, name), _weights(fsdp, stage, name)
            assert sorted(wa) == sorted(wb)  # the whole model, gathered, with each tied tensor once
            assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    start = _weights(fsdp, "pre")
    moved = _weights(fsdp, "align")
    assert max((moved[k] - start[k]).abs().max().item() for k in start) > 1e-3  # the updates did something


def test_fsdp_checkpoints_are_sharded_and_resume_to_the_uninterrupted_weights(runs):
    project, _, fsdp = runs
    with pytest.raises(Exception):  # rank 1 SIGKILLed right after align's step 3 (checkpoint at 2)
        _spawn(project, "fsdp", "killed", kill="align:3")
    killed = project / "killed"
    (checkpoint,) = (killed / "stages" / "align" / "checkpoints").iterdir()
    assert (checkpoint / "shards").is_dir()  # every rank wrote its slices
    from lmspec.runtime.api import open_run, resume
    from lmspec.runtime.checkpoint import load_checkpoint

    # the unfinished stage's policy, read from the sharded checkpoint in this one process
    policy = open_run(killed).model("align")
    tensors, _ = load_checkpoint(checkpoint)
    saved = {k[len("policy."):]: v for k, v in tensors["model"].items() if k.startswith("policy.")}
    assert saved and all(torch.equal(policy.state_dict()[k], v) for k, v in saved.items())
    from lmspec.runtime.progress import Progress

    copy = project / "killed-1"
    import shutil

    shutil.copytree(killed, copy)
    # the same 2 ranks resume to the weights of the run that was not interrupted
    _resume_spawned(project, "killed")
    done, whole = _weights(killed, "align"), _weights(fsdp, "align")
    assert all(torch.equal(done[k], whole[k]) for k in whole)
    # and one process reads the sharded checkpoint (its rollouts are its own from there: samples
    # depend on the world size)
    os.environ["LMSPEC_CACHE"] = str(project / "cache")
    resume(copy, progress=Progress(quiet=True))
    steps = [m["step"] for m in _metrics(copy, "align")]
    assert steps == [1, 2, 3]
    one = _weights(copy, "align")
    assert sorted(one) == sorted(whole) and all(torch.isfinite(t).all() for t in one.values())


def _resumer(rank: int, project: str, out: str) -> None:

    from lmspec.runtime.api import resume
    from lmspec.runtime.progress import Progress

    torch.set_num_threads(1)
    os.environ["LMSPEC_CACHE"] = str(Path(project) / "cache")
    os.chdir(project)
    with gloo_group(rank, f"{project}/rendezvous-resume-{out}"):
        resume(out, progress=Progress(quiet=True))


def _resume_spawned(project: Path, out: str) -> None:
    spawn(_resumer, str(project), out)


def _half_precision_value(rank: int, directory: str) -> None:
    """PPO's value model sharded as on a GPU in bf16 (gathered bf16 weights): its head reads the
    final norm's fp32 output outside the root's forward, in the head's own dtype."""
    import dataclasses


    from lmspec.compiler.api import check_text
    from lmspec.compiler.arch import HeadConfig
    from lmspec.compiler.build import build_model
    from lmspec.runtime import distributed, engine
    from lmspec.runtime.stages.rl import RLStage

    torch.set_num_threads(1)
    with gloo_group(rank, f"{directory}/rendezvous"):
        report = check_text("lmspec 1\nmodel m { vocab: 64, context: 16, layers: 2, d_model: 32, heads: 2 }\n", "m.lmspec")
        arch = dataclasses.replace(report.models["m"], heads=(HeadConfig("scalar", pool="last"),), tie_embeddings=False)
        torch.manual_seed(0)
        value = build_model(arch).eval()
        distributed.shard_model(value, torch.device("cpu"), engine.Precision("bf16", "cuda"))  # bf16 gathering
        # CUDA autocast runs the final norm in fp32 (the CPU's keeps bf16): its output as on a GPU
        value.decoder.final_norm.register_forward_hook(lambda module, args, out: out.float())
        stage = type("Stage", (), {"value": value, "precision": engine.Precision("bf16", "cpu")})()
        ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
        mask, positions = torch.ones_like(ids, dtype=torch.bool), torch.arange(10)[None].expand(2, 10)
        values = RLStage._values(stage, ids, mask, positions, 4)
        assert values.shape == (2, 4) and values.dtype == torch.float32 and torch.isfinite(values).all()


def test_the_value_head_reads_fp32_hidden_states_beside_bf16_gathered_weights(tmp_path):
    spawn(_half_precision_value, str(tmp_path))
