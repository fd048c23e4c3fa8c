"""`rl { checkpoint_activations: true }`: the policy's and PPO's value model's blocks are
recomputed during the updates' backward (the updates run in eval mode, dropout off), the stage
learns exactly as without it, and `lmspec check` counts the smaller activations.

Both stages below start from the same pretrained policy with the same seed and a deterministic
reward (the length judge), so they sample the same rollouts and must make the same updates."""

from __future__ import annotations

import pytest
import torch

from lmspec.compiler import analysis as A
from lmspec.compiler.api import check_text
from lmspec.compiler.costs import value_arch, spec_figures
from lmspec.compiler.rules_parallel import Hardware, device_plans
from run_support import quiet, write_project

RL = """rl NAME {
  policy: gpt from pre
  reward: long
  algorithm: ppo(epochs: 2)
  rollouts { prompts: d.prefixes(tokens: 6, count: 24), per_step: 4, max_new_tokens: 6 }
  minibatch: 2
  steps: 2, eval_prompts: 2, log_every: 1, optimizer: adamw(lr: 3e-3), samples: 0CKPT
}
"""
SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
model gpt { vocab: tok.vocab_size, context: 32, layers: 2, d_model: 32, heads: 2 }
train pre { model: gpt, objective: clm, data: d, steps: 2, batch: 4, seq_len: 16, samples: 0 }
judge long { score: length }
""" + RL.replace("NAME", "plain").replace("CKPT", "") + \
    RL.replace("NAME", "ckpt").replace("CKPT", ", checkpoint_activations: true")
UPDATES = 2 * 2 * (4 // 2)  # steps x epochs x minibatches per epoch


def test_the_updates_checkpoint_and_learn_as_without(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lmspec.compiler.modules import model as model_module
    from lmspec.runtime.api import run

    project = write_project(tmp_path, SPEC)
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(project)
    calls = []
    real = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = run(project / "spec.lmspec", out=tmp_path / "run", progress=quiet())
    assert len(calls) == UPDATES * 2 * 2  # each update: the policy's and the value model's 2 blocks, stage ckpt only
    plain, ckpt = r.metrics("plain"), r.metrics("ckpt")
    assert [m["step"] for m in ckpt] == [1, 2]
    for a, b in zip(plain, ckpt):
        for key in ("loss", "policy_loss", "value_loss", "kl", "reward", "approx_kl", "entropy"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    assert ckpt[-1]["kl"] != 0.0  # the updates moved the policy
    weights = [load_file(str(r.path / "stages" / s / "final" / "model.safetensors")) for s in ("plain", "ckpt")]
    assert weights[0].keys() == weights[1].keys()
    for k, v in weights[0].items():
        torch.testing.assert_close(weights[1][k], v, atol=1e-5, rtol=0, msg=k)


def _check(tmp_path, spec: str = SPEC):
    return check_text(spec, str(write_project(tmp_path, spec) / "spec.lmspec"))


def test_check_counts_the_checkpointed_policy_and_value_model(tmp_path):
    report = _check(tmp_path)
    assert report.ok, [d.message for d in report.diagnostics]
    stages = spec_figures(report, meta=False)[0].stages
    plain, ckpt = stages["plain"].memory, stages["ckpt"].memory
    arch, T = report.models["gpt"], 6 + 6
    expected = sum(sum(A.activation_bytes(a, batch=2, seq_len=T, precision=ckpt.precision,
                                          checkpoint_activations=True).values())
                   for a in (arch, value_arch(arch)))  # a minibatch of 2 x (prompt + response)
    assert ckpt.activations == expected < plain.activations
    assert {"policy.decoder.block_inputs", "value.decoder.block_inputs"} <= ckpt.activation_breakdown.keys()
    assert ckpt.total == plain.total - (plain.activations - ckpt.activations)
    assert (ckpt.weights, ckpt.gradients, ckpt.optimizer) == (plain.weights, plain.gradients, plain.optimizer)
    plans = device_plans(report, Hardware(devices=2, device_memory="1GB"))
    assert plans["ckpt"].memory.checkpoint_activations and not plans["plain"].memory.checkpoint_activations
    assert plans["ckpt"].memory.total < plans["plain"].memory.total


def test_an_rl_stage_that_does_not_fit_is_told_to_checkpoint(tmp_path):
    spec = SPEC.replace("samples: 0\n}", 'samples: 0, device_memory: "1MB"\n}', 1)
    d = next(d for d in _check(tmp_path, spec).diagnostics if d.code == "LMS120")
    assert d.message.startswith("rl 'plain' needs ") and d.help.startswith("set checkpoint_activations: true, ")
