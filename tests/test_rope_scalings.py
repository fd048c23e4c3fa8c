"""YaRN and LongRoPE, the RoPE scalings of Qwen, DeepSeek and Phi-3, as transformers computes them:
tiny random models saved by transformers with an original context (8) shorter than the inputs (12
tokens), so that YaRN's blend and longrope's switch from short to long factors both act; the
import checks with transformers' parameter count, the logits agree within 1e-4 with padding,
greedy generation with the KV cache is transformers' token for token, the spec round-trips and an
export reads back in transformers with the same logits. What lmspec cannot reproduce is refused
naming the field. Nothing is downloaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]

from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

from lmspec.compiler.api import check_text, load_arch  # noqa: E402
from lmspec.compiler.hf import HFImportError, arch_from_hf_config, load_hf_model, spec_from_hf  # noqa: E402
from lmspec.compiler.modules.positions import Rotary, rope_attention_factor, rope_inv_freq  # noqa: E402

transformers.logging.set_verbosity_error()

from hf_support import (  # noqa: E402, I001
    TOL, VOCAB, assert_generation_matches, assert_imports_exactly, assert_logits_match, ckpts_fixture, hf_model, inputs)

T = transformers

LLAMA = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)  # head_dim 16: 8 frequencies
PHI3 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, original_max_position_embeddings=8, pad_token_id=0)
SHORT, LONG = [1.0, 1.25, 1.5, 2.0], [1.0, 2.0, 5.0, 9.0]  # Phi-3's head_dim 8: 4 frequencies each

FAMILIES = {
    # a low theta, narrow betas and no truncation: the ramp takes fractional values, so some
    # frequencies are blends of the kept and the divided ones
    "llama_yarn": (T.LlamaForCausalLM, T.LlamaConfig(**LLAMA, rope_parameters={
        "rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "original_max_position_embeddings": 8,
        "beta_fast": 4.0, "beta_slow": 0.25, "truncate": False})),
    # Qwen2.5's defaults (betas 32/1, truncated ramp), with DeepSeek's mscale ratio as attention factor
    "qwen2_yarn": (T.Qwen2ForCausalLM, T.Qwen2Config(**LLAMA, tie_word_embeddings=True, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10_000.0, "factor": 4.0, "original_max_position_embeddings": 8,
        "mscale": 1.0, "mscale_all_dim": 0.5})),
    "qwen3_yarn_attention_factor": (T.Qwen3ForCausalLM, T.Qwen3Config(**LLAMA, head_dim=16, rope_parameters={
        "rope_type": "yarn", "rope_theta": 1000.0, "factor": 2.0, "original_max_position_embeddings": 8,
        "attention_factor": 1.3})),
    # Phi-3-128k's longrope: short factors within the original context, long ones past it
    "phi3_longrope": (T.Phi3ForCausalLM, T.Phi3Config(**PHI3, rope_parameters={
        "rope_type": "longrope", "rope_theta": 1e4, "short_factor": SHORT, "long_factor": LONG})),
}


ckpts = ckpts_fixture(FAMILIES, "rope_scalings")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_imported_spec_checks_with_the_parameter_count_of_transformers(ckpts, name):
    assert_imports_exactly(ckpts[name])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers_past_the_original_context(ckpts, name):
    assert_logits_match(ckpts[name])  # 12 tokens against an original context of 8


def test_longrope_logits_match_within_the_original_context(ckpts):
    """Six tokens stay within the original context: the short factors."""
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(4))
    _, model = load_hf_model(ckpts["phi3_longrope"])
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf_model(ckpts["phi3_longrope"])(ids).logits
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


@pytest.mark.parametrize(("name", "written"), [
    ("llama_yarn", "yarn(factor: 4.0, original_context: 8, beta_fast: 4.0, beta_slow: 0.25, truncate: false)"),
    ("qwen2_yarn", "yarn(factor: 4.0, original_context: 8, mscale: 1.0, mscale_all_dim: 0.5)"),
    ("phi3_longrope", "longrope(short_factor: [1.0, 1.25, 1.5, 2.0], long_factor: [1.0, 2.0, 5.0, 9.0], "
                      "factor: 4.0, original_context: 8)"),
])
def test_the_spec_writes_the_scaling_with_what_transformers_derives(ckpts, name, written):
    """Phi-3's factor is max_position_embeddings / original_max_position_embeddings, written out."""
    assert f"scaling: {written}" in spec_from_hf(ckpts[name], "m")


@pytest.mark.parametrize("name", ["llama_yarn", "qwen2_yarn", "phi3_longrope"])
def test_greedy_generation_matches_transformers_with_left_padding(ckpts, name):
    """Prompts of 7 and 8 new tokens: the cache crosses the original context (8) mid-generation,
    where Phi-3 re-reads the sequence with its long factors."""
    assert_generation_matches(ckpts[name])


def test_longrope_generation_without_the_restart_would_differ(ckpts):
    """The restart is what makes generation agree: keys cached with the short factors, read by
    queries rotated with the long ones, give other logits than transformers' Phi-3."""
    _, model = load_hf_model(ckpts["phi3_longrope"])
    ids = torch.randint(1, VOCAB, (1, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = model.new_cache(1, 9)
        model(ids, cache=cache)
        nxt = torch.tensor([[7]])
        stale = model(nxt, cache=cache).logits[0, -1]
        fresh = model(torch.cat([ids, nxt], dim=1)).logits[0, -1]
        theirs = hf_model(ckpts["phi3_longrope"])(torch.cat([ids, nxt], dim=1)).logits[0, -1]
    torch.testing.assert_close(fresh, theirs, atol=TOL, rtol=0)
    assert (stale - theirs).abs().max() > 1e-3


# --- the frequencies against transformers' own functions --------------------------------------

@pytest.mark.parametrize("params", [
    {"factor": 4.0, "original_max_position_embeddings": 16},
    {"factor": 8.0, "original_max_position_embeddings": 64, "beta_fast": 8.0, "beta_slow": 0.5, "truncate": False},
    {"factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 1.0},  # DeepSeek-V3
    {"factor": 4.0, "original_max_position_embeddings": 32, "mscale": 0.707, "mscale_all_dim": 0.0},
    {"factor": 0.5, "original_max_position_embeddings": 32},  # below 1: no attention scaling
])
@pytest.mark.parametrize("theta", [10_000.0, 1e6])
def test_yarn_frequencies_and_attention_factor_are_transformers(params, theta):
    config = T.LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=128,
                           rope_parameters={"rope_type": "yarn", "rope_theta": theta, **params})
    theirs, their_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    arch = arch_from_hf_config({**config.to_dict(), "architectures": ["LlamaForCausalLM"]}, "m")
    s = arch.decoder.layers[0].position.scaling
    rotary = Rotary(128, theta, False, ("yarn", s.factor, s.original_context, s.beta_fast, s.beta_slow,
                                        s.attention_factor, s.mscale, s.mscale_all_dim, s.truncate))
    assert torch.equal(rope_inv_freq(rotary), theirs)
    assert rope_attention_factor(rotary) == their_factor


def test_longrope_frequencies_switch_as_transformers():
    config = T.Phi3Config(hidden_size=32, num_attention_heads=4, max_position_embeddings=128,
                          original_max_position_embeddings=16, rope_parameters={
                              "rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG})
    rotary = Rotary(8, 10_000.0, False, ("longrope", tuple(SHORT), tuple(LONG), 16, 8.0, None))
    short, factor = ROPE_INIT_FUNCTIONS["longrope"](config)
    long, _ = ROPE_INIT_FUNCTIONS["longrope"](config, seq_len=17)
    assert torch.equal(rope_inv_freq(rotary), short) and torch.equal(rope_inv_freq(rotary, long=True), long)
    assert rope_attention_factor(rotary) == factor == math.sqrt(1 + math.log(8) / math.log(16))


# --- export ---------------------------------------------------------------------------------------

EXPORTED = """lmspec 1
model qwen_yarn { arch: decoder, vocab: 100, context: 32, layers: 2, d_model: 64, heads: 4, kv_heads: 2, d_ff: 64,
                  position: rope(theta: 1M, scaling: yarn(factor: 4, original_context: 8)), norm: rmsnorm,
                  norm_eps: 1e-6, activation: swiglu, bias: false, qkv_bias: true, tie_embeddings: true }
model deepseek_yarn { arch: decoder, vocab: 100, context: 32, layers: 2, d_model: 64, heads: 4, d_ff: 64,
                      position: rope(theta: 100, scaling: yarn(factor: 4, original_context: 8, beta_fast: 4,
                                                               beta_slow: 0.5, truncate: false, mscale: 1,
                                                               mscale_all_dim: 0.5)),
                      norm: rmsnorm, activation: swiglu, bias: false }
model phi_longrope { arch: decoder, vocab: 100, context: 32, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                     position: rope(scaling: longrope(short_factor: [1, 1.25, 1.5, 2], long_factor: [1, 2, 5, 9],
                                                      original_context: 8, factor: 4)),
                     norm: rmsnorm, activation: swiglu, bias: false }
"""


def _export(root: Path, name: str):
    from safetensors.torch import save_file

    from lmspec.compiler.build import build_model
    from lmspec.compiler.hf import export_hf

    arch = load_arch(EXPORTED, name)
    torch.manual_seed(0)
    model = build_model(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config, tensors = export_hf(arch, model.state_dict())
    (root / name).mkdir()
    (root / name / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    return arch, model.eval(), config, root / name


@pytest.mark.parametrize(("name", "cls", "parameters"), [
    ("qwen_yarn", "Qwen2ForCausalLM", {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                       "original_max_position_embeddings": 8, "beta_fast": 32.0, "beta_slow": 1.0,
                                       "truncate": True}),
    ("deepseek_yarn", "LlamaForCausalLM", {"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0,
                                           "original_max_position_embeddings": 8, "beta_fast": 4.0, "beta_slow": 0.5,
                                           "truncate": False, "mscale": 1.0, "mscale_all_dim": 0.5}),
])
def test_an_export_writes_rope_parameters_transformers_reads_to_the_same_logits(tmp_path, name, cls, parameters):
    arch, model, config, path = _export(tmp_path, name)
    assert config["rope_parameters"] == parameters
    hf = getattr(transformers, cls).from_pretrained(path).eval()
    ids, mask = inputs()  # 12 tokens, past the original context
    real = mask.bool()
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)
    assert load_hf_model(path, name)[0] == arch


def test_a_longrope_export_is_phi3_and_generates_as_transformers(tmp_path):
    """Phi-3 is the one family whose generate re-reads the sequence when longrope switches."""
    arch, model, config, path = _export(tmp_path, "phi_longrope")
    assert config["architectures"] == ["Phi3ForCausalLM"] and config["original_max_position_embeddings"] == 8
    assert config["rope_parameters"] == {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": SHORT,
                                         "long_factor": LONG, "factor": 4.0, "original_max_position_embeddings": 8,
                                         "partial_rotary_factor": 1.0}
    hf = T.Phi3ForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=TOL, rtol=0)
        theirs = hf.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, max_new_tokens=8, temperature=0), theirs)
    assert load_hf_model(path, "phi_longrope")[0] == arch


def test_longrope_outside_phi3_is_not_exported():
    """With q, k, v biases no Phi-3 fits; the Llama-shaped families keep a stale cache."""
    from lmspec.compiler.hf import HFExportError, export_family

    phi = EXPORTED[EXPORTED.index("model phi_longrope"):]
    text = "lmspec 1\n" + phi.replace("bias: false }", "bias: false, qkv_bias: true }")
    with pytest.raises(HFExportError) as caught:
        export_family(load_arch(text, "phi_longrope"))
    assert any(gap.startswith("rope scaling: ") and "longrope" in gap for gap in caught.value.gaps), \
        caught.value.gaps


# --- refusals and check-time errors -------------------------------------------------------------

def _llama_config(**rope) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 32, "rope_parameters": {"rope_theta": 1e4, **rope}}


@pytest.mark.parametrize(("config", "message"), [
    (_llama_config(rope_type="dynamic", factor=2.0),
     r"llama config.json sets rope_parameters.rope_type='dynamic': transformers' dynamic NTK .* state kept across"),
    (_llama_config(rope_type="longrope", short_factor=[1.0] * 4, long_factor=[2.0] * 4,
                   original_max_position_embeddings=8),
     r"llama config.json sets rope_parameters.rope_type='longrope': .* lmspec imports longrope for phi3 only"),
    (_llama_config(rope_type="yarn", original_max_position_embeddings=8),
     r"sets rope_parameters.rope_type='yarn' but no rope_parameters.factor"),
    ({**_llama_config(rope_type="longrope", short_factor=[1.0] * 3, long_factor=[2.0] * 4), "model_type": "phi3",
      "architectures": ["Phi3ForCausalLM"]},
     r"phi3 config.json sets rope_parameters.short_factor with 3 values: longrope needs one per rotated frequency, 4"),
])
def test_what_lmspec_cannot_reproduce_is_refused_naming_the_field(config, message):
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config(config, "m")


def test_phi3_reads_yarn_as_longrope_and_its_own_original_context():
    """Phi3Config renames "yarn" (and "su") to longrope and takes original_max_position_embeddings
    from the top level, whatever rope_parameters says (4096 when absent)."""
    config = {**_llama_config(rope_type="yarn", short_factor=SHORT, long_factor=LONG,
                              original_max_position_embeddings=8), "model_type": "phi3",
              "architectures": ["Phi3ForCausalLM"], "max_position_embeddings": 8192}
    s = arch_from_hf_config(config, "m").decoder.layers[0].position.scaling
    assert (s.kind, s.original_context, s.factor) == ("longrope", 4096, 2.0)


SPEC = """lmspec 1
model m {{ arch: decoder, vocab: 100, context: 32, layers: 2, d_model: 32, heads: 4, d_ff: 64,
          position: rope(scaling: {scaling}), norm: rmsnorm, activation: swiglu, bias: false }}
"""


@pytest.mark.parametrize(("scaling", "code", "where", "message", "help"), [
    ("yarn(factor: 4, original_context: 8, beta_fast: 1, beta_slow: 2)", "LMS124", "1, beta_slow",
     "yarn rope scaling needs beta_fast above beta_slow, got beta_fast 1 and beta_slow 2", "beta_fast: 32"),
    ("longrope(short_factor: [1, 2, 3], long_factor: [1, 2, 3, 4], original_context: 8, factor: 4)", "LMS125",
     "[1, 2, 3]", "longrope short_factor of layer 0 of decoder has 3 values, but the layer rotates 8 dimensions",
     "give short_factor 4 values"),
    ("longrope(short_factor: [1, 2, 3, 4], long_factor: [1, 2], original_context: 8, factor: 4)", "LMS125",
     "[1, 2]", "longrope long_factor of layer 0 of decoder has 2 values", "give long_factor 4 values"),
])
def test_bad_scalings_are_check_errors_with_a_place_and_a_help(scaling, code, where, message, help):
    text = SPEC.format(scaling=scaling)
    report = check_text(text, "m.lmspec")
    [d] = [d for d in report.diagnostics if d.is_error]
    assert d.code == code and message in d.message and help in d.help
    line = text.splitlines()[d.span.line - 1]
    assert line[d.span.col - 1:].startswith(where)
