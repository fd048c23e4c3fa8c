"""The no-grad scoring passes of an rl step (the reference's log-probs, the policy's before any
update, PPO's values) run a minibatch of rollouts at a time: they hold the logits of `minibatch`
rows, never of the whole step's, so their peak stays under an update's, which `check` counts
(docs/analysis.md#rl-stages). Row by row they give what one pass over every rollout gives."""

from __future__ import annotations

import torch

from lmspec.compiler.api import check_text
from lmspec.compiler.build import build_model
from lmspec.runtime.stages import rl as rl_stage
from run_support import quiet, write_project

SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
model gpt { vocab: tok.vocab_size, context: 32, layers: 2, d_model: 32, heads: 2 }
train pre { model: gpt, objective: clm, data: d, steps: 2, batch: 4, seq_len: 16, samples: 0 }
judge long { score: length }
rl tune {
  policy: gpt from pre
  reward: long
  algorithm: ppo(epochs: 2)
  rollouts { prompts: d.prefixes(tokens: 6, count: 24), per_step: 6, max_new_tokens: 6 }
  minibatch: 2
  steps: 2, eval_prompts: 2, log_every: 1, optimizer: adamw(lr: 3e-3), samples: 0
}
"""


def test_the_scoring_passes_run_a_minibatch_of_rollouts_at_a_time(tmp_path, monkeypatch):
    from lmspec.runtime.api import run

    project = write_project(tmp_path, SPEC)
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(project)
    seen = []  # (which pass, grad or not, rows)
    real_logprobs, real_values = rl_stage.RLStage._logprobs, rl_stage.RLStage._values

    def logprobs(self, model, full, *args, **kwargs):
        which = "reference" if model is self.reference else "policy"
        seen.append((which, torch.is_grad_enabled(), full.shape[0]))
        return real_logprobs(self, model, full, *args, **kwargs)

    def values(self, full, *args, **kwargs):
        seen.append(("value", torch.is_grad_enabled(), full.shape[0]))
        return real_values(self, full, *args, **kwargs)

    monkeypatch.setattr(rl_stage.RLStage, "_logprobs", logprobs)
    monkeypatch.setattr(rl_stage.RLStage, "_values", values)
    r = run(project / "spec.lmspec", out=tmp_path / "run", progress=quiet())
    assert r.status("tune")["status"] == "finished"
    scoring = [(which, rows) for which, grad, rows in seen if not grad]
    # 2 steps x 3 minibatches of 2 of the 6 rollouts, for each of the three passes
    assert sorted(scoring) == sorted([(which, 2) for which in ("reference", "policy", "value") for _ in range(6)])
    updates = [rows for which, grad, rows in seen if grad and which == "policy"]
    assert updates == [2] * (2 * 2 * 3)  # steps x epochs x minibatches: the updates are as before


def test_row_by_row_is_one_pass_over_every_rollout():
    report = check_text("lmspec 1\nmodel m { vocab: 64, context: 16, layers: 2, d_model: 32, heads: 2 }\n", "m.lmspec")
    torch.manual_seed(0)
    model = build_model(report.models["m"]).eval()
    g = torch.Generator().manual_seed(1)
    full = torch.randint(0, 64, (5, 12), generator=g)
    mask = torch.ones_like(full, dtype=torch.bool)
    mask[1, :3] = False  # a left-padded prompt
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)

    def logits(full, mask, positions):
        return model(full, attention_mask=mask, position_ids=positions).logits

    with torch.no_grad():
        whole = logits(full, mask, positions)
        for n in (1, 2, 3, 5, 8):
            torch.testing.assert_close(rl_stage._by_rows(n, logits, full, mask, positions), whole,
                                       atol=1e-5, rtol=0)
