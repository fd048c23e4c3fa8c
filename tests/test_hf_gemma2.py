"""Gemma 2 and Gemma 3 (text) through the Hugging Face import and export: tiny random models saved
by transformers, imported by lmspec. Each written spec passes `check` with transformers' parameter
count, and the logits agree within 1e-4 on a right-padded batch, greedy generation with the KV
cache token for token; what lmspec cannot reproduce is refused naming the field. Nothing is
downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]

from lmspec.compiler.api import check_text, load_arch  # noqa: E402
from lmspec.compiler.hf import (  # noqa: E402
    HFImportError,
    arch_from_hf_config,
    load_hf_model,
    read_hf_config,
    spec_from_hf,
)

transformers.logging.set_verbosity_error()

from hf_support import TOL, VOCAB, assert_generation_matches, assert_imports_exactly, assert_logits_match, hf_model, inputs, save_tiny  # noqa: E402, I001

T = transformers

# head_dim 16 beside hidden_size / heads = 8; a window of 5 inside the 12-token inputs; caps small
# enough that tanh bends the scores and logits of a random model; query_pre_attn_scalar 12 != head_dim
GEMMA2 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, sliding_window=5,
              query_pre_attn_scalar=12, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
# 7 layers: the sixth (layer 5) is global, the others slide; the local RoPE base differs from the global
# one, which is linearly scaled (Gemma-3 4B and up: factor 8)
GEMMA3 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=7, num_attention_heads=4,
              num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=5,
              query_pre_attn_scalar=16, final_logit_softcapping=None, attn_logit_softcapping=None,
              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                               "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 10_000.0}})

FAMILIES = {
    "gemma2": (T.Gemma2ForCausalLM, T.Gemma2Config(**GEMMA2)),
    "gemma2_bare": (T.Gemma2Model, T.Gemma2Config(**GEMMA2)),
    # the 9B's shape of settings: scale 1/sqrt(head_dim), global layers every other one, untied
    "gemma2_plain_scale": (T.Gemma2ForCausalLM, T.Gemma2Config(**{**GEMMA2, "num_hidden_layers": 4,
                                                                  "query_pre_attn_scalar": 16},
                                                               tie_word_embeddings=False)),
    "gemma3": (T.Gemma3ForCausalLM, T.Gemma3TextConfig(**GEMMA3)),
    "gemma3_bare": (T.Gemma3TextModel, T.Gemma3TextConfig(**GEMMA3)),
    # a final cap, and the exact gelu in the MLP
    "gemma3_capped": (T.Gemma3ForCausalLM, T.Gemma3TextConfig(**{**GEMMA3, "final_logit_softcapping": 3.0,
                                                                 "hidden_activation": "gelu"})),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_gemma2")
    return {name: save_tiny(root, name, cls, config) for name, (cls, config) in FAMILIES.items()}


def _spec(path: Path) -> str:
    return spec_from_hf(path, "m")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_imported_spec_checks_with_the_parameter_count_of_transformers(ckpts, name):
    assert_imports_exactly(ckpts[name])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers_with_padding(ckpts, name):
    assert_logits_match(ckpts[name])


def test_gemma2_spec_states_sandwich_norms_caps_scale_and_alternating_windows(ckpts):
    text = _spec(ckpts["gemma2"])
    for line in ("placement: sandwich", "norm_offset: 1", "attention: sliding(window: 5)",
                 f"attention_scale: {12 ** -0.5!r}", "attention_softcap: 2.0", "head: lm(softcap: 3.0)",
                 "activation: geglu_tanh", "embed_scale: 5.656854249492381", "tie_embeddings: true",
                 "layer every 2 from 1 { attention: causal }"):
        assert line in text, line
    arch = arch_from_hf_config(read_hf_config(ckpts["gemma2"]), "m")
    assert [L.attention.kind for L in arch.decoder.layers] == ["sliding", "causal"] * 3


def test_gemma2_with_query_pre_attn_scalar_equal_to_head_dim_scales_as_usual(ckpts):
    text = _spec(ckpts["gemma2_plain_scale"])
    assert "attention_scale: inverse_sqrt" in text and "tie_embeddings: false" in text


def test_gemma3_spec_states_qk_norm_and_the_global_layers_own_rope(ckpts):
    text = _spec(ckpts["gemma3"])
    assert "qk_norm: true" in text and "position: rope(theta: 100)\n" in text
    assert "layer 5 { attention: causal, position: rope(theta: 10_000, scaling: linear(factor: 8.0)) }" in text
    assert "softcap" not in text and "head: lm\n" in text
    arch = arch_from_hf_config(read_hf_config(ckpts["gemma3"]), "m")
    assert [L.position.theta for L in arch.decoder.layers] == [100.0] * 5 + [10_000.0, 100.0]


@pytest.mark.parametrize(("name", "change"), [
    ("gemma2", {"attn_logit_softcapping": None}),
    ("gemma2", {"final_logit_softcapping": None}),
    ("gemma2", {"sliding_window": 64}),  # no layer slides
    ("gemma2", {"query_pre_attn_scalar": 16}),
    ("gemma3", {"rope_parameters": {**GEMMA3["rope_parameters"], "sliding_attention": {"rope_type": "default",
                                                                                        "rope_theta": 10_000.0}}}),
])
def test_each_gemma_setting_changes_the_logits(ckpts, name, change):
    """The tiny models are sized so that every setting above bites: dropping one moves the logits."""
    ids, _ = inputs()
    config = FAMILIES[name][1].to_dict() | change
    cls = FAMILIES[name][0]
    torch.manual_seed(0)
    other = cls(type(FAMILIES[name][1]).from_dict(config)).eval()
    other.load_state_dict(hf_model(ckpts[name]).state_dict())
    with torch.no_grad():
        assert (other(ids).logits - hf_model(ckpts[name])(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "gemma3_capped"])
def test_greedy_generation_matches_transformers_with_left_padding(ckpts, name):
    """The KV cache across sliding and global layers, caps and two RoPEs, token for token."""
    assert_generation_matches(ckpts[name])


def test_older_configs_without_layer_types_alternate_and_read_the_legacy_rope_keys(ckpts):
    """transformers 4 wrote no layer_types (Gemma 2: every other layer slides, from the first; Gemma 3:
    five in sliding_window_pattern) and gave Gemma 3 rope_local_base_freq, rope_theta and rope_scaling."""
    config = {k: v for k, v in read_hf_config(ckpts["gemma2"]).items() if k != "layer_types"}
    assert arch_from_hf_config(config, "m") == arch_from_hf_config(read_hf_config(ckpts["gemma2"]), "m")
    config = {k: v for k, v in read_hf_config(ckpts["gemma3"]).items() if k not in ("layer_types", "rope_parameters")}
    config |= dict(sliding_window_pattern=6, rope_local_base_freq=100.0, rope_theta=10_000.0,
                   rope_scaling={"rope_type": "linear", "factor": 8.0})
    assert arch_from_hf_config(config, "m") == arch_from_hf_config(read_hf_config(ckpts["gemma3"]), "m")


@pytest.mark.parametrize(("name", "change", "message"), [
    ("gemma2", {"use_bidirectional_attention": True}, r"use_bidirectional_attention=True"),
    ("gemma2", {"hidden_activation": "gelu_accurate"}, r"hidden_activation='gelu_accurate'"),
    ("gemma2", {"layer_types": ["sliding_attention", "chunked_attention"] * 3}, r"layer_types=.*chunked_attention"),
    ("gemma2", {"sliding_window": None}, r"sliding_window=None while layer_types marks sliding_attention"),
    ("gemma3", {"attn_logit_softcapping": 50.0}, r"attn_logit_softcapping=50.0.*never applies"),
    ("gemma3", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
     r"one for sliding_attention and one for full_attention"),
    ("gemma3", {"rope_parameters": {**GEMMA3["rope_parameters"], "full_attention": {"rope_type": "dynamic",
                                                                                   "factor": 2.0}}},
     r"rope_type='dynamic'"),
])
def test_what_lmspec_cannot_reproduce_is_refused_naming_the_field(ckpts, name, change, message):
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config({**read_hf_config(ckpts[name]), **change}, "m")


def test_null_caps_are_no_caps_and_absent_ones_gemma2s_defaults(ckpts):
    config = read_hf_config(ckpts["gemma2"])
    uncapped = arch_from_hf_config({**config, "attn_logit_softcapping": None, "final_logit_softcapping": None}, "m")
    assert {L.attention.softcap for L in uncapped.decoder.layers} == {None} and uncapped.head("lm").softcap is None
    config = {k: v for k, v in config.items() if k not in ("attn_logit_softcapping", "final_logit_softcapping")}
    default = arch_from_hf_config(config, "m")  # Gemma2Config's 50 and 30
    assert {L.attention.softcap for L in default.decoder.layers} == {50.0} and default.head("lm").softcap == 30.0


def test_multimodal_gemma3_is_refused_naming_the_model_type():
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": {}}
    with pytest.raises(HFImportError, match=r"model_type 'gemma3' is not supported: .*vision.*gemma3_text"):
        arch_from_hf_config(config, "m")


def test_bf16_embeddings_are_scaled_as_transformers_scales_them(ckpts):
    """Gemma multiplies the embeddings by sqrt(hidden_size) rounded to the weights' dtype (in bfloat16
    sqrt(32) = 5.657 is 5.65625): lmspec's embeddings equal transformers' bit for bit."""
    ids, _ = inputs()
    _, model = load_hf_model(ckpts["gemma2"])
    hf = hf_model(ckpts["gemma2"])
    model, hf = model.to(torch.bfloat16), hf.to(torch.bfloat16)
    with torch.no_grad():
        ours = model._embed(ids, torch.arange(ids.shape[1])[None], None, model.decoder)
        theirs = hf.model.embed_tokens(ids)
        assert torch.equal(ours, theirs)
        # and the whole forward stays close in bfloat16 (the norms round differently: see docs)
        diff = (model(ids).logits.float() - hf(ids).logits.float()).abs().max()
    assert diff < 0.1


# --- export: lmspec models written back as gemma and gemma2 --------------------------------------

EXPORTED = """lmspec 1
model gemma { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 1, head_dim: 16,
              d_ff: 64, position: rope, norm: rmsnorm, norm_eps: 1e-6, norm_offset: 1, activation: geglu_tanh,
              bias: false, embed_scale: 5.656854249492381, tie_embeddings: true }
model gemma2 { arch: decoder, vocab: 100, context: 64, layers: 4, d_model: 32, heads: 4, kv_heads: 2, head_dim: 16,
               d_ff: 64, attention: sliding(window: 5), attention_scale: 0.2, attention_softcap: 2.0,
               position: rope, norm: rmsnorm, norm_eps: 1e-6, norm_offset: 1, placement: sandwich,
               activation: geglu, bias: false, embed_scale: 5.656854249492381, tie_embeddings: true,
               head: lm(softcap: 3.0)
               layer every 2 from 1 { attention: causal } }
model gemma2_untied { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, head_dim: 8,
                      d_ff: 64, position: rope(theta: 500), norm: rmsnorm, norm_offset: 1, placement: sandwich,
                      activation: geglu_tanh, bias: false, embed_scale: 5.656854249492381 }
model gemma_bare { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                   position: rope, norm: rmsnorm, norm_offset: 1, activation: swiglu, bias: false,
                   embed_scale: 5.656854249492381, head: none }
"""
EXPORT_FAMILIES = {"gemma": ("gemma", "GemmaForCausalLM"), "gemma2": ("gemma2", "Gemma2ForCausalLM"),
                   "gemma2_untied": ("gemma2", "Gemma2ForCausalLM"), "gemma_bare": ("gemma", "GemmaModel")}


def _export(tmp_path: Path, name: str):
    from safetensors.torch import save_file

    from lmspec.compiler.build import build_model
    from lmspec.compiler.hf import export_family, export_hf

    (tmp_path / "exported.lmspec").write_text(EXPORTED)
    arch = load_arch(tmp_path / "exported.lmspec", name)
    assert export_family(arch) == EXPORT_FAMILIES[name]
    torch.manual_seed(0)
    model = build_model(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config, tensors = export_hf(arch, model.state_dict())
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
    return arch, model.eval(), config, tmp_path / name


@pytest.mark.parametrize("name", sorted(EXPORT_FAMILIES))
def test_an_export_loads_in_transformers_with_the_same_logits(tmp_path, name):
    arch, model, config, path = _export(tmp_path, name)
    cls = getattr(transformers, EXPORT_FAMILIES[name][1])
    hf, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask = inputs()
    real = mask.bool()
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask), hf.eval()(ids, attention_mask=mask)
        ours = ours.logits if arch.heads else ours.hidden
        theirs = theirs.logits if arch.heads else theirs.last_hidden_state
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)
    assert load_hf_model(path, name)[0] == arch


def test_gemma2_export_writes_the_scalar_caps_and_layer_types(tmp_path):
    _, _, config, _ = _export(tmp_path, "gemma2")
    assert (config["query_pre_attn_scalar"], config["attn_logit_softcapping"], config["final_logit_softcapping"],
            config["sliding_window"], config["hidden_activation"]) == (25, 2.0, 3.0, 5, "gelu")
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 2


REFUSED = """lmspec 1
model two_windows { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: rope,
                    norm: rmsnorm, norm_offset: 1, placement: sandwich, activation: geglu_tanh, bias: false,
                    embed_scale: 5.656854249492381, attention: sliding(window: 5)
                    layer 1 { attention: sliding(window: 6) } }
model gemma_exact_gelu { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: rope,
                         norm: rmsnorm, norm_offset: 1, activation: geglu, bias: false,
                         embed_scale: 5.656854249492381 }
model gemma_unscaled { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: rope,
                       norm: rmsnorm, norm_offset: 1, placement: sandwich, activation: geglu_tanh, bias: false }
"""


@pytest.mark.parametrize(("name", "family", "gap"), [
    ("two_windows", "gemma2", "attention: windows of [5, 6] (gemma2 has one sliding_window)"),
    ("gemma_exact_gelu", "gemma", "activation: geglu (gemma has geglu_tanh, swiglu or reglu"),
    ("gemma_unscaled", "gemma2", "embed_scale: 1.0 (gemma2 has sqrt(d_model) = 5.656854249492381)"),
])
def test_what_no_gemma_expresses_is_refused_naming_the_gap(tmp_path, name, family, gap):
    from lmspec.compiler.hf import HFExportError, export_family

    (tmp_path / "refused.lmspec").write_text(REFUSED)
    with pytest.raises(HFExportError) as info:
        export_family(load_arch(tmp_path / "refused.lmspec", name))
    assert info.value.family == family
    assert any(g.startswith(gap) for g in info.value.gaps), info.value.gaps


@pytest.mark.parametrize(("cls", "config"), [
    (T.GemmaForCausalLM, T.GemmaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                       max_position_embeddings=64)),
    FAMILIES["gemma2"],
    FAMILIES["gemma2_bare"],
], ids=["gemma", "gemma2", "gemma2_bare"])
def test_an_imported_gemma_exports_back_to_the_same_tensors_and_config(tmp_path, cls, config):
    from lmspec.compiler.hf import export_hf

    path = save_tiny(tmp_path, "original", cls, config)
    arch, model = load_hf_model(path)
    exported, tensors = export_hf(arch, model.state_dict())
    original = hf_model(path).state_dict()
    assert sorted(tensors) == sorted(k for k in original if k != "lm_head.weight" or not arch.tie_embeddings)
    for name, tensor in tensors.items():
        assert torch.equal(tensor, original[name]), name
    assert arch_from_hf_config(exported, "m") == arch_from_hf_config(read_hf_config(path), "m")


def test_gemma3_is_not_exported_and_the_refusal_names_what_gemma2_lacks(ckpts):
    from lmspec.compiler.hf import HFExportError, export_family

    with pytest.raises(HFExportError) as info:
        export_family(load_hf_model(ckpts["gemma3"])[0])
    assert info.value.family == "gemma2"
    assert any(g.startswith("qk_norm: true (gemma2 has no norm on queries and keys") for g in info.value.gaps)
    assert any(g.startswith("position differs between layers") for g in info.value.gaps), info.value.gaps


def test_gemma3_1b_shaped_config_counts_as_transformers_and_writes_one_periodic_override():
    """google/gemma-3-1b-pt's config.json (transformers 4 spelling), built on the meta device."""
    from lmspec.compiler.analysis import count_parameters
    from lmspec.compiler.hf.spec import spec_from_config

    config = dict(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], vocab_size=262_144,
                  hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                  sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                  max_position_embeddings=32_768, rms_norm_eps=1e-6, final_logit_softcapping=None,
                  attn_logit_softcapping=None, rope_scaling=None)
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        hf = T.Gemma3ForCausalLM(T.Gemma3TextConfig(**fields))
    arch = arch_from_hf_config(config, "gemma3_1b")
    assert count_parameters(arch).total == sum(p.numel() for p in hf.parameters())
    text = spec_from_config(config, "gemma3_1b")
    assert "layer every 6 from 5 { attention: causal, position: rope(theta: 1_000_000) }" in text
    report = check_text(text, "gemma3_1b.lmspec")
    assert report.ok and report.models["gemma3_1b"] == arch
