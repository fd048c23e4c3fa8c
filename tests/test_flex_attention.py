"""FlexAttention (modules/flex.py): the layers whose mask SDPA takes dense (a sliding window
shorter than the sequence, a prefix, ALiBi) run `flex_attention` with a block mask on CUDA.

torch 2.13's CPU FlexAttention runs forward passes only (its backward raises), so on the CPU
the kernel is compared with SDPA without gradients, and the training path is covered by what
the CPU can say: which layers take it, what `check` counts for it, the graph `compile` traces,
and the errors that stop a CPU run asking for it. The GPU run is benchmarks/gpu/run.sh.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lmspec.compiler import analysis as A
from lmspec.compiler.analysis.memory import FLEX_BLOCK, _block_mask_bytes, _flex_mask_bytes
from lmspec.compiler.api import check_text
from lmspec.compiler.build import build_model
from lmspec.compiler.costs import spec_figures
from lmspec.compiler.modules import AttentionContext
from lmspec.compiler.modules.flex import BLOCK, build_flex_mask, use_flex

MODELS = {
    "sliding_gqa": "position: rope(theta: 10_000), attention: sliding(window: 8), kv_heads: 2",
    "prefix": "position: rope(theta: 10_000), attention: prefix",
    "alibi": "position: alibi",
    "alibi_sliding": "position: alibi, attention: sliding(window: 6), kv_heads: 1",
    "encoder_alibi": "arch: encoder, position: alibi, head: mlm",
}


def _report(body: str, stage: str = ""):
    arch = "" if "arch:" in body else "arch: decoder, "
    text = (f"lmspec 1\ntokenizer tok {{ kind: bytes }}\ndata text {{ source: builtin(\"tiny-stories\") }}\n"
            f"model m {{ vocab: tok.vocab_size, context: 64, layers: 2, d_model: 64, heads: 4, {arch}{body} }}\n"
            + stage)
    return check_text(text, "flex.lmspec")


def _model(body: str) -> torch.nn.Module:
    report = _report(body)
    assert report.ok, [d.message for d in report.diagnostics]
    torch.manual_seed(0)
    return build_model(report.models["m"], device=torch.device("cpu")).eval()


def _logits(model, ids, **kw) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is unfused
        out = model(ids, **kw)
    return out.logits


@pytest.fixture
def flex_calls(monkeypatch):
    """How many times the layers called FlexAttention."""
    from lmspec.compiler.modules import attention

    calls = []
    real = attention.flex_attend

    def counted(*args, **kw):
        calls.append(args[0].shape)
        return real(*args, **kw)

    monkeypatch.setattr(attention, "flex_attend", counted)
    return calls


@pytest.mark.parametrize("kind", list(MODELS))
def test_flex_attention_gives_sdpas_logits(kind, flex_calls):
    model = _model(MODELS[kind])
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    kw = {"prefix_lengths": torch.tensor([5, 17, 40])} if kind == "prefix" else {}
    dense = _logits(model.attention_kernel("sdpa"), ids, **kw)
    assert not flex_calls
    flex = _logits(model.attention_kernel("flex"), ids, **kw)
    assert len(flex_calls) == 2  # both layers
    assert (flex - dense).abs().max() < 1e-5


def test_heads_under_16_keep_sdpa(flex_calls):
    """torch's CUDA FlexAttention takes no head_dim under 16; check agrees (LMS136 under flex)."""
    from lmspec.compiler.analysis.memory import FLEX_MIN_HEAD_DIM
    from lmspec.compiler.modules.flex import MIN_HEAD_DIM

    assert FLEX_MIN_HEAD_DIM == MIN_HEAD_DIM == 16
    model = _model(MODELS["alibi"] + ", head_dim: 8").attention_kernel("flex")
    _logits(model, torch.randint(0, 256, (2, 20)))
    assert not flex_calls
    stage = "train t { model: m, objective: clm, data: text, batch: 2, seq_len: 32, attention_kernel: flex }\n"
    report = _report(MODELS["alibi"] + ", head_dim: 8", stage)
    assert any(d.code == "LMS136" and "(head_dim 8, under 16)" in d.message for d in report.diagnostics)


@pytest.mark.parametrize("kind", ["sliding_gqa", "alibi"])
def test_padding_is_hidden_from_flex_attention_as_from_sdpa(kind, flex_calls):
    model = _model(MODELS[kind])
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 22:] = False  # right padding in the second row
    dense = _logits(model.attention_kernel("sdpa"), ids, attention_mask=mask)
    flex = _logits(model.attention_kernel("flex"), ids, attention_mask=mask)
    assert flex_calls
    assert (flex[mask] - dense[mask]).abs().max() < 1e-5
    # and the padding changes the real tokens of neither: the second row's first 22 equal an unpadded pass
    alone = _logits(model, ids[1:, :22])
    assert (flex[1, :22] - alone[0]).abs().max() < 1e-5


def _context(T: int = 20, *, flex: bool = True, start: int = 0, key_mask=None, relative_bias=None):
    pos = torch.arange(start, start + T)[None]
    return AttentionContext(q_pos=pos, k_pos=torch.arange(start + T)[None], start=start, key_mask=key_mask,
                            prefix_lengths=torch.tensor([3, 7]), relative_bias=relative_bias, memory_mask=None,
                            dtype=torch.float32, flex=flex)


def test_only_the_masks_sdpa_takes_dense_go_to_flex_attention():
    ctx = _context()
    assert ctx.mask("sliding", 4, flex=True).flex is not None
    assert ctx.mask("prefix", flex=True).flex is not None
    assert ctx.mask("causal", alibi_heads=4, flex=True).flex is not None
    # SDPA's fused kernels take these without a mask tensor: nothing to gain
    assert ctx.mask("causal", flex=True) == ctx.mask("causal") and ctx.mask("causal").is_causal
    assert ctx.mask("sliding", 40, flex=True).is_causal  # a window longer than the keys is causal attention
    # a layer that cannot take it (dropout, soft cap) asks without flex and gets SDPA's dense mask
    assert ctx.mask("sliding", 4).flex is None and ctx.mask("sliding", 4).mask is not None
    # padding alone stays with SDPA, as check counts it
    padded = _context(key_mask=torch.ones(2, 20, dtype=torch.bool))
    assert padded.mask("causal", flex=True).flex is None
    # T5's trained bias, a context made without flex, and decoding with a cache: SDPA
    rel = _context(relative_bias=torch.zeros(1, 4, 20, 20))
    assert rel.mask("causal", relative=True, flex=True).flex is None
    assert _context(flex=False).mask("sliding", 4, flex=True).flex is None
    assert _context(T=1, start=19).mask("sliding", 4, flex=True).flex is None


def test_a_layer_with_attention_dropout_keeps_sdpa_while_training():
    model = _model(MODELS["sliding_gqa"].replace("kv_heads: 2", "kv_heads: 2, dropout: 0.1")).attention_kernel("flex")
    attn = model.decoder.layers[0].attn
    ctx = _context()
    model.train()
    assert attn._mask(ctx).flex is None  # FlexAttention has no dropout
    model.eval()
    assert attn._mask(ctx).flex is not None  # without dropout at evaluation it can


def test_decoding_with_a_cache_keeps_sdpa_and_agrees_with_flex_prefill():
    model = _model(MODELS["sliding_gqa"]).attention_kernel("flex")
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    full = _logits(model, ids)
    cache = model.new_cache(batch=2, max_len=24)
    with torch.no_grad():
        first = model(ids[:, :20], cache=cache).logits
        step = [model(ids[:, t:t + 1], cache=cache).logits for t in range(20, 24)]
    assert (torch.cat([first, *step], dim=1) - full).abs().max() < 1e-5


def test_which_kernel_a_stack_uses():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_flex("auto", cpu) and not use_flex("sdpa", cuda) and use_flex("flex", cpu)
    with pytest.raises(ValueError, match="unknown attention kernel 'triton'"):
        use_flex("triton", cpu)
    model = _model(MODELS["alibi"])
    with pytest.raises(ValueError, match="expected one of auto, sdpa, flex"):
        model.attention_kernel("fast")
    assert model.decoder.attention_kernel == "auto"  # the default: FlexAttention on CUDA only
    assert model.attention_kernel("sdpa").decoder.attention_kernel == "sdpa"


@pytest.mark.parametrize("rows, T", [(1, 100), (1, 128), (1, 300), (3, 257)])
def test_check_counts_the_block_mask_flex_attention_builds(rows, T):
    assert FLEX_BLOCK == BLOCK
    key_mask = torch.ones(rows, T, dtype=torch.bool) if rows > 1 else None
    made = build_flex_mask("sliding", 50, T=T, key_mask=key_mask, prefix_lengths=None,
                           positions=torch.arange(T)[None], slopes=None, device=torch.device("cpu"))
    tensors = [t for t in made.block_mask.as_tuple() if isinstance(t, torch.Tensor)]
    assert sum(t.nbytes for t in tensors) == _block_mask_bytes(rows, T)


def test_check_gives_flex_layers_flash_attentions_activations_on_cuda():
    """A grouped-query sliding-window layer with a dense mask runs SDPA's math kernel on CUDA
    (memory-efficient attention takes no grouped heads): the (T x T) probabilities per head.
    FlexAttention keeps what flash attention keeps for causal attention, plus its block mask."""
    sliding = _report(MODELS["sliding_gqa"]).models["m"]
    causal = _report(MODELS["sliding_gqa"].replace("attention: sliding(window: 8), ", "")).models["m"]
    shape = dict(batch=4, seq_len=64, precision="bf16")
    flex = A.activation_bytes(sliding, **shape)  # auto: FlexAttention on CUDA
    dense = A.activation_bytes(sliding, **shape, attention_kernel="sdpa")
    flash = A.activation_bytes(causal, **shape)
    assert flex["decoder.attention"] == flash["decoder.attention"] < dense["decoder.attention"]
    assert dense["decoder.attention"] - flash["decoder.attention"] > 4 * 4 * 64 * 64 * 2  # a layer's probabilities
    assert flex["decoder.masks"] == _flex_mask_bytes(1, 64, None)
    # on the CPU nothing changes: FlexAttention does not train there
    cpu = dict(shape, device="cpu")
    assert A.activation_bytes(sliding, **cpu) == A.activation_bytes(sliding, **cpu, attention_kernel="sdpa")
    with pytest.raises(ValueError, match="unknown attention kernel"):
        A.activation_bytes(sliding, **shape, attention_kernel="xformers")


def test_check_and_the_stage_agree_on_the_kernel():
    stage = "train t {{ model: m, objective: clm, data: text, batch: 4, seq_len: 64, precision: bf16{} }}\n"
    figures = {}
    for kernel in ("auto", "sdpa"):
        report = _report(MODELS["sliding_gqa"], stage.format(f", attention_kernel: {kernel}"))
        assert report.ok, [d.message for d in report.diagnostics]
        figures[kernel] = spec_figures(report, meta=False)[0].stages["t"].memory.activations
    assert figures["auto"] < figures["sdpa"]


def test_flex_for_a_layer_it_cannot_take_is_an_error():
    stage = ("train t { model: m, objective: clm, data: text, batch: 4, seq_len: 64, "
             "attention_kernel: flex }\n")
    report = _report(MODELS["sliding_gqa"] + ", dropout: 0.1", stage)
    (d,) = [d for d in report.diagnostics if d.code == "LMS136"]
    assert "cannot take layer 0 of model 'm's decoder (attention dropout 0.1) (and 1 more layer)" in d.message
    assert "attention_kernel: auto" in d.help and "dropout 0" in d.help
    assert d.span.line == 5
    capped = _report(MODELS["sliding_gqa"] + ", attention_softcap: 50", stage)
    assert any(d.code == "LMS136" and "(a soft cap)" in d.message for d in capped.diagnostics)
    # under auto such layers run SDPA and nothing is said
    assert _report(MODELS["sliding_gqa"] + ", dropout: 0.1", stage.replace("flex", "auto")).ok


RL_WITH_REWARD_MODEL = """lmspec 1
tokenizer tok { kind: bytes }
data text { source: builtin("tiny-stories") }
model m { arch: decoder, vocab: tok.vocab_size, context: 64, layers: 2, d_model: 64, heads: 4, POLICY }
model rm { arch: decoder, vocab: tok.vocab_size, context: 64, layers: 1, d_model: 64, heads: HEADS, REWARD }
train pre { model: m, objective: clm, data: text }
judge long { score: length }
feedback prefs { policy: m from pre, prompts: text.prefixes(tokens: 8, count: 32), samples: 2, max_new_tokens: 8,
                 judge: long }
train rw { model: rm with head scalar, objective: bradley_terry, data: prefs }
rl r { policy: m from pre, reward: rw, algorithm: grpo(group: 4), attention_kernel: flex,
       rollouts { prompts: text.prefixes(tokens: 8), per_step: 8, max_new_tokens: 8 } }
"""


def _rl(policy: str, reward: str, heads: int):
    text = RL_WITH_REWARD_MODEL.replace("POLICY", policy).replace("REWARD", reward).replace("HEADS", str(heads))
    return check_text(text, "rl.lmspec")


def test_an_rl_stage_checks_its_reward_model_s_layers_too():
    """The reward model follows the rl stage's attention_kernel (runtime.stages.rl), so under flex
    its layers are held to the same rules as the policy's."""
    sliding = MODELS["sliding_gqa"]
    assert _rl(sliding, "position: alibi", heads=4).ok  # both take FlexAttention
    (d,) = [d for d in _rl(sliding, "position: alibi", heads=8).diagnostics if d.code == "LMS136"]
    assert "cannot take layer 0 of model 'rm's decoder (head_dim 8, under 16)" in d.message
    # the policy needs no dense mask but the reward model does: flex still does something
    assert _rl("position: rope(theta: 10_000)", "position: alibi", heads=4).diagnostics == []
    (w,) = _rl("position: rope(theta: 10_000)", "position: rope(theta: 10_000)", heads=4).diagnostics
    assert w.code == "LMS137" and "no layer of model 'm' needs a dense mask over 16 tokens, nor of 'rm' over 16" \
        in w.message


def test_a_reward_model_with_its_own_tokenizer_is_checked_over_its_context():
    """Another tokenizer can make prompt + response longer than the policy's tokens: up to the
    reward model's context is what it may read."""
    windowed = "attention: sliding(window: 32)"  # 16 policy tokens fit in the window; 64 do not
    assert _rl(MODELS["sliding_gqa"], windowed, heads=8).ok
    text = (RL_WITH_REWARD_MODEL.replace("POLICY", MODELS["sliding_gqa"]).replace("REWARD", windowed)
            .replace("HEADS", "8").replace("tokenizer tok { kind: bytes }", "tokenizer tok { kind: bytes }\n"
                                           "tokenizer own { kind: bytes }")
            .replace("model rm { arch: decoder, vocab: tok.vocab_size", "model rm { arch: decoder, vocab: own.vocab_size")
            .replace("objective: bradley_terry,", "objective: bradley_terry, tokenizer: own,"))
    report = check_text(text, "rl.lmspec")
    (d,) = [d for d in report.diagnostics if d.code == "LMS136"]
    assert "layer 0 of model 'rm's decoder (head_dim 8, under 16)" in d.message


def test_flex_where_no_layer_needs_a_dense_mask_is_a_warning():
    stage = "train t { model: m, objective: clm, data: text, seq_len: 8, attention_kernel: flex }\n"
    report = _report(MODELS["sliding_gqa"], stage)  # a window of 8 over 8 tokens: causal attention
    (d,) = [d for d in report.diagnostics if d.code == "LMS137"]
    assert d.severity == "warning" and "no layer of model 'm' needs a dense mask over 8 tokens" in d.message
    assert report.ok


def test_a_cpu_run_asking_for_flex_stops_before_its_run_directory(tmp_path):
    from lmspec.runtime.api import run
    from lmspec.runtime.errors import RunError

    text = (f"lmspec 1\ntokenizer tok {{ kind: bytes }}\ndata text {{ source: builtin(\"tiny-stories\") }}\n"
            f"model m {{ arch: decoder, vocab: tok.vocab_size, context: 64, layers: 1, d_model: 64, heads: 4, "
            f"{MODELS['alibi']} }}\n"
            "train t { model: m, objective: clm, data: text, steps: 1, batch: 2, attention_kernel: flex }\n")
    spec = tmp_path / "flex.lmspec"
    spec.write_text(text)
    with pytest.raises(RunError) as err:
        run(spec, out=tmp_path / "run", device="cpu")
    assert "FlexAttention trains on CUDA only" in str(err.value) and "attention_kernel: auto" in err.value.help
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["sliding_gqa", "prefix", "alibi"])
def test_a_flex_model_traces_to_one_graph(kind):
    """compile: true over FlexAttention layers: one graph, no break (traced, not compiled)."""
    import torch._dynamo as dynamo

    model = _model(MODELS[kind]).attention_kernel("flex")
    ids = torch.randint(0, 256, (2, 16))
    kw = {"prefix_lengths": torch.tensor([4, 9])} if kind == "prefix" else {}
    dynamo.reset()
    with torch.no_grad():
        explained = dynamo.explain(model)(ids, **kw)
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1


def test_auto_asks_for_triton_without_a_graph_break():
    """On CUDA `auto` asks whether triton is there inside the compiled forward: a constant to
    torch.compile, not a call it would break the graph for."""
    import torch._dynamo as dynamo

    dynamo.reset()
    explained = dynamo.explain(lambda x: x + int(use_flex("auto", torch.device("cuda"))))(torch.ones(1))
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]


def test_layers_of_other_kinds_and_windows_share_one_compiled_kernel():
    """torch.compile keeps at most a few versions of flex_attention before it falls back to the
    unfused kernel: kinds, windows and prefixes are tensors to it, not new code."""
    import torch._dynamo as dynamo
    from torch._dynamo.testing import CompileCounter
    from torch.nn.attention.flex_attention import flex_attention

    from lmspec.compiler.modules.positions import alibi_slopes

    dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(flex_attention, backend=counter)
    q, kv = torch.randn(2, 4, 40, 16), torch.randn(2, 2, 40, 16)

    def run(kind, window=None, *, key_mask=None, prefix=None, alibi=False, T=40):
        made = build_flex_mask(kind, window, T=T, key_mask=key_mask, prefix_lengths=prefix,
                               positions=torch.arange(T)[None], slopes=alibi_slopes(4) if alibi else None,
                               device=torch.device("cpu"))
        with torch.no_grad():
            compiled(q[:, :, :T], kv[:, :, :T], kv[:, :, :T], score_mod=made.score_mod, block_mask=made.block_mask,
                     enable_gqa=True)

    for window in (4, 8, 16):
        run("sliding", window)
    assert counter.frame_count == 1
    run("causal", alibi=True)
    run("sliding", 8, alibi=True)
    run("bidirectional", alibi=True)
    assert counter.frame_count == 2  # ALiBi adds its score function
    run("prefix", prefix=torch.tensor([3, 9]))
    run("sliding", 8, key_mask=torch.ones(2, 40, dtype=torch.bool))
    assert counter.frame_count == 3  # row-wise masks (a prefix, padding) are one more
