"""The engine: schedules, weight-decay groups, the step's loss normalisation; checkpoints;
`--set` overrides checked as the spec is."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmspec.compiler import schema as S
from lmspec.compiler.api import check_text
from lmspec.compiler.build import build_model
from lmspec.runtime import engine
from lmspec.runtime.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, load_optimizer,
                                       load_weights, optimizer_tensors, rng_state, save_checkpoint, save_weights,
                                       set_rng_state)
from lmspec.runtime.objectives import Context, build_objective, compose

SPEC = """lmspec 1
model m { vocab: 40, context: 16, layers: 2, d_model: 32, heads: 4, tie_embeddings: true, dropout: 0.1 }
"""


def tiny_model():
    torch.manual_seed(0)
    return build_model(check_text(SPEC).models["m"])


# ----------------------------------------------------------------------------- schedules


def test_cosine_warms_up_then_decays_to_min_lr():
    sched = S.Cosine(warmup=10, min_lr=0.1)
    lrs = [engine.lr_at(i, sched, 1.0, 110) for i in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))  # (step - warmup) / (total - 1 - warmup)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_linear_and_constant_schedules():
    assert [engine.lr_at(i, S.Linear(warmup=0, min_lr=0.0), 2.0, 5) for i in range(5)] == [2.0, 1.5, 1.0, 0.5, 0.0]
    assert {engine.lr_at(i, S.Constant(warmup=0), 3e-4, 50) for i in range(50)} == {3e-4}
    assert engine.lr_at(1, S.Constant(warmup=4), 1.0, 50) == pytest.approx(0.5)


def test_weight_decay_on_matrices_only_embeddings_included():
    model = tiny_model()
    groups = engine.param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n: id(p) for n, p in model.named_parameters()}
    assert names["embed.weight"] in decayed
    assert all(p.dim() >= 2 for p in groups[0]["params"])
    assert all(p.dim() < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_auto_precision_is_fp32_on_cpu_and_fp16_needs_a_gpu():
    from lmspec.runtime.errors import RunError

    assert engine.resolve_precision("auto", torch.device("cpu")).name == "fp32"
    with pytest.raises(RunError, match="fp16 needs a GPU"):
        engine.resolve_precision("fp16", torch.device("cpu"))


# ----------------------------------------------------------------------------- the step


def test_grad_accum_gives_the_gradients_of_one_big_batch():
    """clm windows hold equal token counts; the engine's rule is what matters when they do not
    (tests/test_runtime_objectives.py shows it for sft): here the whole train_step is compared."""
    ctx = Context(seq_len=8, vocab_size=40, specials={"eos": 39, "pad": 38})
    terms = compose([(1.0, build_objective(S.CLM(), ctx))])
    windows = torch.randint(0, 38, (8, 9), generator=torch.Generator().manual_seed(1))
    labels_masked = windows.clone()

    def grads(micro: int):
        model = tiny_model()
        model.eval()  # no dropout: the two runs must see the same function
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        batches = []
        for m in range(0, 8, micro):
            b = terms[0][1].build([{"tokens": w} for w in labels_masked[m:m + micro]], torch.Generator())
            for row in range(micro):  # different numbers of loss tokens per sequence
                b["labels"][row, : (m + row) % 6] = -100
            batches.append(b)
        # capture gradients before zero_grad: run the step's arithmetic by hand via a hook
        captured = {}
        real_step = opt.step

        def step():
            captured.update({n: p.grad.clone() for n, p in model.named_parameters()})
            real_step()
        opt.step = step
        r = engine.train_step(model, opt, batches, terms, lr=0.0, clip_grad=None,
                              precision=engine.Precision("fp32", "cpu"))
        return captured, r.loss

    g1, l1 = grads(8)
    g4, l4 = grads(2)
    assert l1 == pytest.approx(l4, abs=1e-6)
    for name in g1:
        torch.testing.assert_close(g1[name], g4[name], atol=1e-6, rtol=0)


def test_a_non_finite_loss_skips_the_update():
    ctx = Context(seq_len=8, vocab_size=40, specials={"eos": 39})
    terms = compose([(1.0, build_objective(S.CLM(), ctx))])
    model = tiny_model()
    with torch.no_grad():
        model.embed.weight[0, 0] = float("nan")
    before = {n: p.clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = terms[0][1].build([{"tokens": torch.zeros(9, dtype=torch.long)}], torch.Generator())
    r = engine.train_step(model, opt, [batch], terms, lr=1e-2, clip_grad=1.0, precision=engine.Precision("fp32", "cpu"))
    assert not r.finite
    for n, p in model.named_parameters():
        assert torch.equal(p.nan_to_num(), before[n].nan_to_num())


def test_micro_generator_is_a_function_of_seed_step_and_micro():
    a = torch.rand(4, generator=engine.micro_generator(3, 10, 1))
    assert torch.equal(a, torch.rand(4, generator=engine.micro_generator(3, 10, 1)))
    assert not torch.equal(a, torch.rand(4, generator=engine.micro_generator(3, 11, 1)))
    assert not torch.equal(a, torch.rand(4, generator=engine.micro_generator(3, 10, 0)))


# ----------------------------------------------------------------------------- checkpoints


def _opt_state(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 40, (2, 8))).logits.sum().backward()
    opt.step()
    return opt


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = tiny_model()
    opt = _opt_state(model)
    tensors, meta = optimizer_tensors(opt)
    torch.manual_seed(5)
    rng = rng_state()
    expected_next = torch.rand(3)
    path = save_checkpoint(tmp_path, 7, {"model": {k: v.clone() for k, v in model.state_dict().items()
                                                   if k != "lm_head.weight"}, "optimizer": tensors},
                           {"step": 7, "rng": rng, "opt": meta})
    assert path.name == "step-0000007" and not list(tmp_path.glob("*.tmp"))
    loaded, state = load_checkpoint(path)
    other = tiny_model()
    other.load_state_dict(loaded["model"], strict=False)
    other.tie_weights()
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    load_optimizer(opt2, loaded["optimizer"], state["opt"])
    for idx, a in opt.state_dict()["state"].items():
        b = opt2.state_dict()["state"][idx]
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), (idx, k)
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected_next)


def test_keeps_the_newest_k_and_skips_a_corrupt_one(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((4,), float(step))}}, {"step": step}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000003", "step-0000004"]
    newest = tmp_path / "step-0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-5])  # truncated by a crash
    warnings = []
    path, tensors, state = latest_checkpoint(tmp_path, warn=warnings.append)
    assert path.name == "step-0000003" and state["step"] == 3
    assert float(tensors["model"]["w"][0]) == 3.0
    assert "step-0000004" in warnings[0] and "model.safetensors" in warnings[0] and "checksum" in warnings[0]


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {"step": 1})
    (tmp_path / "step-0000002.tmp").mkdir()  # killed while writing
    assert latest_checkpoint(tmp_path)[2]["step"] == 1


def test_tied_weights_are_saved_once_and_load_back(tmp_path):
    model = tiny_model()
    save_weights(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "embed.weight" in keys and "lm_head.weight" not in keys
    other = build_model(check_text(SPEC).models["m"])
    load_weights(other, tmp_path / "m.safetensors")
    assert other.lm_head.weight is other.embed.weight
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n


def test_checkpoint_files_are_never_pickles(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {"step": 1})
    for f in path.iterdir():
        head = f.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK", f  # pickle protocol / torch zip
    assert json.loads((path / "checksums.json").read_text()).keys() == {"model.safetensors", "state.json"}


# ----------------------------------------------------------------------------- --set


GOOD = """lmspec 1
data d { source: builtin("tiny-stories") }
model m { vocab: 300, context: 16, layers: 2, d_model: 32, heads: 4 }
train t { model: m, objective: clm, data: d, steps: 10, optimizer: adamw(lr: 1e-3) }
"""


def test_set_replaces_a_key_and_is_checked_like_the_spec():
    r = check_text(GOOD, "s.lmspec", overrides=("t.steps=3", "t.optimizer=sgd(lr: 0.5)", "m.layers=1"))
    assert r.ok, r.diagnostics
    assert r.spec.blocks["t"].steps == 3 and r.spec.blocks["t"].optimizer.kind == "sgd"
    assert r.models["m"].decoder.n_layers == 1
    bad = check_text(GOOD, "s.lmspec", overrides=("t.stpes=3",))
    (d,) = bad.errors
    assert d.code == "LMS041" and d.span.file == "<--set>" and "did you mean 'steps'" in d.help


def test_set_on_a_missing_block_or_malformed():
    r = check_text(GOOD, "s.lmspec", overrides=("x.steps=3", "nonsense"))
    msgs = sorted(d.message for d in r.errors)
    assert any("not a block of this spec" in m for m in msgs)
    assert any("is not BLOCK.KEY=VALUE" in m for m in msgs)
    wrong_type = check_text(GOOD, "s.lmspec", overrides=("t.steps=\"many\"",))
    assert [d.code for d in wrong_type.errors] == ["LMS042"]
