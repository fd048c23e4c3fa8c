"""Mixture of experts: `mlp: moe(...)`, from the spec through the sparse dispatch to its exact figures."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lmspec.compiler.analysis import count_parameters, flops_per_token, parameter_shapes, training_memory
from lmspec.compiler.analysis.meta import _inputs, _ScalarsOnMeta
from lmspec.compiler.api import check_text
from lmspec.compiler.arch import MoEConfig, StackConfig, arch_from_dict, arch_to_dict
from lmspec.compiler.build import build_model
from lmspec.compiler.costs import render_figures, spec_figures
from lmspec.compiler.modules.moe import MixtureOfExperts, load_balancing_loss, moe_aux_loss

SPEC = """lmspec 1

model mix {
  vocab: 61
  context: 32
  layers: 2
  d_model: 16
  heads: 2
  kv_heads: 1
  d_ff: 24
  position: rope
  norm: rmsnorm
  activation: swiglu
  bias: false
  mlp: moe(experts: 4, top_k: 2, shared_experts: 1, router_jitter: 0.1, aux_loss: 0.02)
}
"""


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def arch_of(spec: str = SPEC):
    return check_text(spec).raise_for_errors().models["mix"]


def with_moe(arch, **moe):
    """`arch` with every decoder layer's MLP a mixture of experts."""
    layers = tuple(dataclasses.replace(layer, moe=MoEConfig(**moe)) for layer in arch.decoder.layers)
    return dataclasses.replace(arch, decoder=StackConfig(layers, arch.decoder.final_norm))


# ---- the key ---------------------------------------------------------------------------------


def test_moe_key_lowers_to_every_layer():
    arch = arch_of()
    assert {layer.moe for layer in arch.decoder.layers} == {MoEConfig(4, 2, 1, 0.1, 0.02)}
    assert arch_from_dict(arch_to_dict(arch)) == arch  # a run directory keeps it
    dense = arch_of(SPEC.replace("  mlp: moe(experts: 4, top_k: 2, shared_experts: 1, router_jitter: 0.1, "
                                 "aux_loss: 0.02)\n", ""))
    assert {layer.moe for layer in dense.decoder.layers} == {None}


def test_top_k_above_experts_is_a_located_error():
    report = check_text(SPEC.replace("top_k: 2", "top_k: 5"))
    [d] = report.errors
    assert d.span.line == 15
    assert "top_k (5) must be at most experts (4)" in d.message and "`top_k: 4`" in d.message


# ---- the module ------------------------------------------------------------------------------


def small_moe(experts=4, top_k=2, jitter=0.0) -> MixtureOfExperts:
    arch = with_moe(arch_of(), experts=experts, top_k=top_k, router_jitter=jitter)
    return build_model(arch).decoder.layers[0].mlp


def dense_reference(moe: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, then the top-k weighted sum: what the sparse dispatch must equal."""
    h = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(moe.router(h), dim=-1)
    top, chosen = probs.topk(moe.top_k, dim=-1)
    gate = torch.zeros_like(probs).scatter(1, chosen, top / top.sum(-1, keepdim=True))  # (N, E)
    every = torch.stack([e(h) for e in moe.experts], dim=1)  # (N, E, d)
    out = (gate[..., None] * every).sum(1) + (moe.shared(h) if moe.shared is not None else 0)
    return out.reshape(x.shape)


def test_sparse_dispatch_equals_the_dense_computation():
    moe = small_moe().eval()
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(moe(x), dense_reference(moe, x), rtol=1e-5, atol=1e-6)


def test_each_expert_runs_only_on_its_tokens():
    moe = small_moe(experts=8, top_k=2)
    x = torch.randn(2, 9, 16)
    with FlopCounterMode(display=False) as counter:
        moe(x)
    N, d, ff = 18, 16, 24
    # the router, then top_k of the 8 experts per token (3 matrices each: swiglu); running all
    # 8 on every token would be 4x the routed part
    assert counter.get_total_flops() == 2 * N * d * 8 + 2 * N * 2 * d * ff * 3


def test_router_jitter_only_in_training():
    moe = small_moe(jitter=0.5)
    x = torch.randn(2, 5, 16)
    moe.eval()
    torch.testing.assert_close(moe(x), dense_reference(moe, x), rtol=1e-5, atol=1e-6)
    moe.train()
    assert not torch.allclose(moe(x), moe(x))


def test_load_balancing_loss_is_top_k_when_balanced_and_grows_with_imbalance():
    E, k = 4, 2
    uniform = torch.full((8, E), 1 / E)
    balanced = torch.tensor([[0, 1], [2, 3]] * 4)
    assert float(load_balancing_loss(uniform, balanced, E)) == pytest.approx(k)
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 8)
    assert float(load_balancing_loss(skewed, torch.tensor([[0, 1]] * 8), E)) > k


def test_model_reports_the_mean_aux_loss_of_its_layers():
    arch = arch_of()
    model = build_model(arch)
    assert moe_aux_loss(model) is None  # before any forward
    model(input_ids=torch.randint(0, arch.vocab, (2, 6)))
    layers = [b.mlp for b in model.decoder.layers]
    expected = (layers[0].aux_loss + layers[1].aux_loss) / 2
    weighted, aux = moe_aux_loss(model)
    assert aux.requires_grad and aux.item() == pytest.approx(expected.item())
    assert weighted.item() == pytest.approx(0.02 * expected.item())  # aux_loss: 0.02
    aux.backward()
    assert layers[0].router.weight.grad.abs().sum() > 0  # the loss trains the router
    dense = dataclasses.replace(arch, decoder=StackConfig(tuple(
        dataclasses.replace(layer, moe=None) for layer in arch.decoder.layers)))
    assert moe_aux_loss(build_model(dense)) is None


# ---- the analysis ----------------------------------------------------------------------------


def test_parameters_exact_with_active_count():
    arch = arch_of()
    model = build_model(arch, device="meta")
    assert {p.name: p.shape for p in parameter_shapes(arch)} == {n: tuple(p.shape) for n, p in model.named_parameters()}
    count = count_parameters(arch)
    assert count.total == sum(p.numel() for p in model.parameters())
    expert = 3 * 16 * 24  # gate, up and down of one expert
    assert count.breakdown["decoder.experts"] == 2 * 4 * expert
    assert count.breakdown["decoder.router"] == 2 * 16 * 4
    assert count.breakdown["decoder.mlp"] == 2 * expert  # the shared expert
    assert count.active == count.total - 2 * (4 - 2) * expert


@pytest.mark.parametrize("act,shared", [("swiglu", 1), ("gelu", 0), ("relu", 2)])
def test_flops_match_flop_counter(act, shared):
    arch = with_moe(dataclasses.replace(arch_of(), decoder=StackConfig(tuple(
        dataclasses.replace(l, activation=act) for l in arch_of().decoder.layers))), experts=4, top_k=2,
        shared_experts=shared)
    model = build_model(arch, device="meta")
    with _ScalarsOnMeta(), FlopCounterMode(display=False) as counter:
        model(**_inputs(arch, 2, 10, 10))
    assert 2 * flops_per_token(arch, 10).forward_per_sequence == counter.get_total_flops()


def saved_bytes(model, ids, autocast: bool) -> int:
    """Bytes autograd keeps for backward in a forward and its loss, parameters and their
    autocast copies excluded (as tests/test_analysis.py measures)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def is_copy(t):
        fn = t.grad_fn
        while fn is not None and type(fn).__name__ in ("TBackward0", "TransposeBackward0", "PermuteBackward0"):
            fn = fn.next_functions[0][0]
        return type(fn).__name__ == "ToCopyBackward0" and type(fn.next_functions[0][0]).__name__ == "AccumulateGrad"

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params and not is_copy(t):
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
        F.cross_entropy(logits.flatten(0, 1), torch.randint(0, logits.shape[-1], logits.shape[:2]).flatten())
    return sum(storages.values())


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("act,shared,jitter", [("swiglu", 1, 0.1), ("gelu", 0, 0.0), ("reglu", 2, 0.0)])
def test_activation_bytes_exact_at_the_routing_the_data_gives(act, shared, jitter, precision):
    base = arch_of()
    arch = with_moe(dataclasses.replace(base, decoder=StackConfig(tuple(
        dataclasses.replace(l, activation=act) for l in base.decoder.layers))), experts=4, top_k=2,
        shared_experts=shared, router_jitter=jitter)
    model = build_model(arch).train()
    ids = torch.randint(0, arch.vocab, (2, 12))
    estimate = training_memory(arch, batch=2, seq_len=12, precision=precision, device="cpu").activations
    assert estimate == saved_bytes(model, ids, precision == "bf16")


def test_check_shows_active_parameters():
    report = check_text(SPEC).raise_for_errors()
    figures, _ = spec_figures(report)
    mix = figures.models["mix"]
    assert mix.to_json()["params"]["active"] == count_parameters(report.models["mix"]).active < mix.params.total
    text = render_figures(figures)
    assert f"mix: active {mix.params.active:,} of {mix.params.total:,} parameters per token" in text


# ---- training: the load-balancing loss joins the objective -------------------------------------


def clm_step(model, coefficient: float, micro: int = 2):
    from lmspec.runtime import engine
    from lmspec.runtime.objectives import Context, build_objective, compose
    from lmspec.compiler import schema as S

    for layer in model.decoder.layers:
        layer.mlp.aux_weight = coefficient
    terms = compose([(1.0, build_objective(S.CLM(), Context(seq_len=8, vocab_size=61, specials={"eos": 60})))])
    windows = torch.randint(0, 60, (4, 9), generator=torch.Generator().manual_seed(1))
    batches = [terms[0][1].build([{"tokens": w} for w in windows[m:m + micro]], torch.Generator())
               for m in range(0, 4, micro)]
    grads = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    real_step = opt.step

    def step():
        grads.update({n: p.grad.clone() for n, p in model.named_parameters()})
        real_step()
    opt.step = step
    r = engine.train_step(model, opt, batches, terms, lr=0.0, clip_grad=None, precision=engine.Precision("fp32", "cpu"))
    return r, grads


def test_train_step_adds_the_weighted_aux_loss_and_reports_it():
    model = build_model(arch_of()).eval()  # eval: no jitter, so both steps see the same function
    plain, g0 = clm_step(model, 0.0)
    weighted, g1 = clm_step(model, 0.5)
    assert plain.moe_aux == pytest.approx(weighted.moe_aux) and plain.moe_aux >= 2 - 1e-6  # top_k at balance
    assert weighted.loss == pytest.approx(plain.loss + 0.5 * plain.moe_aux, rel=1e-6)
    assert weighted.terms == pytest.approx(plain.terms)  # the objective's own figure stays apart
    router = "decoder.layers.0.mlp.router.weight"
    assert not torch.allclose(g0[router], g1[router])  # the aux loss trains the router...
    lm = "decoder.layers.1.attn.o_proj.weight"
    assert not torch.allclose(g0[lm], g1[lm])  # ... and what feeds it


def test_a_dense_model_reports_no_aux_loss():
    dense = SPEC.replace("  mlp: moe(experts: 4, top_k: 2, shared_experts: 1, router_jitter: 0.1, aux_loss: 0.02)\n", "")
    model = build_model(arch_of(dense)).eval()
    from lmspec.runtime import engine
    from lmspec.runtime.objectives import Context, build_objective, compose
    from lmspec.compiler import schema as S

    terms = compose([(1.0, build_objective(S.CLM(), Context(seq_len=8, vocab_size=61, specials={"eos": 60})))])
    batch = terms[0][1].build([{"tokens": torch.randint(0, 60, (9,))}], torch.Generator())
    r = engine.train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [batch], terms, lr=0.0, clip_grad=None,
                          precision=engine.Precision("fp32", "cpu"))
    assert r.moe_aux is None


def test_a_run_logs_the_aux_loss(tmp_path, monkeypatch):
    from lmspec.runtime.api import run
    from lmspec.runtime.progress import Progress

    words = "the cat sat on a mat and then it ran to the park".split()
    (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(30))
                                                    for i in range(30)))
    spec = SPEC.replace("vocab: 61", "vocab: tok.vocab_size").replace("lmspec 1\n", """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
""") + "train pretrain { model: mix, objective: clm, data: d, steps: 2, batch: 2, log_every: 1, eval_every: 2 }\n"
    (tmp_path / "spec.lmspec").write_text(spec)
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path / "cache"))
    r = run(tmp_path / "spec.lmspec", out=tmp_path / "run", device="cpu", progress=Progress(quiet=True))
    import json

    lines = [json.loads(x) for x in (r.path / "stages" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "grad_norm" in m]
    assert len(steps) == 2 and all(m["moe_aux"] > 0 for m in steps)


def test_activation_checkpointing_keeps_the_aux_loss_gradients():
    arch = arch_of()  # router_jitter: 0.1, so the recomputation must replay the same noise too

    def grads(checkpointed: bool):
        torch.manual_seed(0)
        model = build_model(arch).train()
        model.checkpoint_activations(checkpointed)
        torch.manual_seed(1)
        out = model(input_ids=torch.randint(0, arch.vocab, (2, 8)))
        weighted, _ = moe_aux_loss(model)
        (out.logits.square().mean() + weighted).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-5, atol=1e-7)


# ---- Mixtral import ------------------------------------------------------------------------------

MIXTRAL = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, num_local_experts=4, num_experts_per_tok=2)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    path = tmp_path_factory.mktemp("mixtral") / "tiny"
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(
        **MIXTRAL, output_router_logits=True, router_aux_loss_coef=0.02))
    with torch.no_grad():  # move every parameter off its init (norms of one)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return path, model.eval()


def test_mixtral_spec_checks_with_the_parameter_count_of_transformers(mixtral):
    from lmspec.compiler.analysis import meta_check
    from lmspec.compiler.hf import arch_from_hf_config, read_hf_config, spec_from_hf

    path, hf = mixtral
    text = spec_from_hf(path, "m")
    assert "  mlp: moe(experts: 4, top_k: 2, shared_experts: 0, router_jitter: 0.0, aux_loss: 0.02)\n" in text
    report = check_text(text, "imported.lmspec")
    assert report.ok, [f"{d.code} {d.message}" for d in report.diagnostics]
    arch = report.models["m"]
    assert arch == arch_from_hf_config(read_hf_config(path), "m")
    assert count_parameters(arch).total == sum(p.numel() for p in hf.parameters())
    assert meta_check(arch, seq_len=8) == []


def test_mixtral_logits_match_transformers_with_padding(mixtral):
    from lmspec.compiler.hf import load_hf_model

    path, hf = mixtral
    _, model = load_hf_model(path)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0  # the second row is right-padded
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)
        real = mask.bool()
        ours, theirs = model(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)


def test_mixtral_load_balancing_loss_matches_transformers_for_one_layer(mixtral):
    """transformers pools every layer's tokens before taking f·P; for one layer the two agree."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from lmspec.compiler.hf import load_hf_model

    path, hf = mixtral
    _, model = load_hf_model(path)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = hf(ids, output_router_logits=True).router_logits
        model(ids)
    theirs = load_balancing_loss_func((logits[0],), 4, 2)
    torch.testing.assert_close(model.decoder.layers[0].mlp.aux_loss, theirs, atol=1e-6, rtol=0)


def test_mixtral_without_router_logits_imports_no_aux_loss(tmp_path):
    from lmspec.compiler.hf import arch_from_hf_config

    arch = arch_from_hf_config({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], **MIXTRAL}, "m")
    assert arch.decoder.layers[0].moe == MoEConfig(4, 2, 0, 0.0, 0.0)  # HF adds its aux loss only then
    from lmspec.compiler.hf import HFImportError

    with pytest.raises(HFImportError, match="num_experts_per_tok=5"):
        arch_from_hf_config({"model_type": "mixtral", **{**MIXTRAL, "num_experts_per_tok": 5}}, "m")


def test_an_expert_no_token_reaches_still_gets_a_gradient():
    """DDP waits for a gradient of every parameter on every rank: an idle expert must give zeros."""
    moe = small_moe(experts=4, top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0  # inputs along +1 all route to expert 0
    moe(torch.ones(1, 5, 16)).sum().backward()
    idle = moe.experts[3].down_proj.weight.grad
    assert idle is not None and not idle.any()
    assert moe.experts[0].down_proj.weight.grad.abs().sum() > 0


def test_export_refuses_a_mixture_of_experts_by_name():
    from lmspec.compiler.hf import HFExportError, export_family

    with pytest.raises(HFExportError, match=r"mixture of experts \(mlp: moe\(\.\.\.\)\)"):
        export_family(arch_of())


def test_graph_draws_the_mixture_of_experts():
    from lmspec.compiler.api import check_text
    from lmspec.compiler.graphs import architecture_graph

    report = check_text(SPEC, "moe.lmspec")
    (name,) = report.models
    g = architecture_graph(report.models[name], report.spec)
    mlp = g.nodes["decoder.0.mlp"]
    assert mlp["experts"] > 1 and f"top-{mlp['top_k']} of {mlp['experts']}" in mlp["label"]
