"""BART: each stack of an encoder-decoder with its own learned position table and embedding norm.

The language half: `encoder { position: learned, embed_norm: true }` (and the decoder's) give that
stack a table / norm of its own, counted to the parameter; a spec without them is unchanged; the
combinations the runtime would ignore are LMS133 / LMS134. The import half: tiny
BartForConditionalGeneration and BartModel checkpoints import with transformers' exact parameter
count and logits, and the options lmspec cannot build are refused, naming the field."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from hf_support import VOCAB, assert_imports_exactly, assert_logits_match, ckpts_fixture
from lmspec.compiler.analysis import count_parameters
from lmspec.compiler.api import check_text
from lmspec.compiler.build import build_model
from lmspec.compiler.graphs import architecture_graph
from lmspec.compiler.hf import HFImportError, arch_from_hf_config, load_hf_model, read_hf_config, spec_from_hf

D, CONTEXT, OFFSET = 32, 16, 2
MODEL = ("model m {{ arch: encoder_decoder, vocab: 100, context: 16, d_model: 32, heads: 4, d_ff: 64, "
         "placement: post, final_norm: false, position_offset: 2,{top} encoder {{ layers: 1{enc} }}, "
         "decoder {{ layers: 2{dec} }} }}")
TABLE = (CONTEXT + OFFSET) * D  # one learned position table
NORM = 2 * D  # one LayerNorm, weight and bias


def report(top: str = "", enc: str = "", dec: str = ""):
    return check_text(MODEL.format(top=top and f" {top},", enc=enc, dec=dec), "m.lmspec")


def arch(top: str = "", enc: str = "", dec: str = ""):
    r = report(top, enc, dec)
    assert r.ok, [(d.code, d.message) for d in r.diagnostics]
    return r.models["m"]


def errors(top: str = "", enc: str = "", dec: str = ""):
    return [d for d in report(top, enc, dec).diagnostics if d.severity == "error"]


# --- the language --------------------------------------------------------------------------


def test_a_spec_without_stack_embeddings_keeps_one_shared_table():
    plain = arch()
    assert not any(s.own_positions or s.own_embed_norm for s in plain.stacks)
    names = [n for n, _ in build_model(plain, device="meta").named_parameters()]
    assert "pos_embed.weight" in names and not any(".pos_embed." in n for n in names)
    assert count_parameters(plain).breakdown["positions"] == TABLE


def test_each_stack_its_own_table_and_norm_counted_exactly():
    plain = count_parameters(arch()).total
    both = arch(enc=", position: learned, embed_norm: true", dec=", position: learned, embed_norm: true")
    model = build_model(both, device="meta")
    names = {n for n, _ in model.named_parameters()}
    assert {"encoder.pos_embed.weight", "decoder.pos_embed.weight", "encoder.embed_norm.weight",
            "decoder.embed_norm.bias"} <= names
    assert "pos_embed.weight" not in names and "embed_norm.weight" not in names  # nothing shared is left
    count = count_parameters(both)
    assert count.total == sum(p.numel() for p in model.parameters()) == plain + TABLE + 2 * NORM
    assert count.breakdown["positions"] == 2 * TABLE and count.breakdown["embed_norm"] == 2 * NORM
    assert count.non_embedding == count.total - VOCAB * D - 2 * TABLE


def test_a_stack_without_its_own_reads_the_shared_ones():
    one = arch(top="embed_norm: true", enc=", position: learned, embed_norm: true")
    names = {n for n, _ in build_model(one, device="meta").named_parameters()}
    assert {"pos_embed.weight", "encoder.pos_embed.weight", "embed_norm.weight", "encoder.embed_norm.weight"} <= names
    assert count_parameters(one).total == count_parameters(arch(top="embed_norm: true")).total + TABLE + NORM


def test_the_stacks_really_embed_with_their_own_tables():
    torch.manual_seed(0)
    model = build_model(arch(enc=", position: learned", dec=", position: learned")).eval()
    ids, dec = torch.randint(0, 100, (1, 5)), torch.randint(0, 100, (1, 4))
    before = model(ids, decoder_input_ids=dec).logits
    with torch.no_grad():
        model.decoder.pos_embed.weight.zero_()
    assert not torch.allclose(before, model(ids, decoder_input_ids=dec).logits)
    with pytest.raises(ValueError, match="do not fit the learned position table"):
        model(torch.randint(0, 100, (1, CONTEXT + 1)), decoder_input_ids=dec)


def test_a_stack_table_under_rope_is_not_lms112():
    one = arch(top="position: rope", enc=", position: learned")
    assert one.encoder.own_positions and not one.decoder.own_positions and one.decoder.layers[0].position.kind == "rope"
    assert count_parameters(one).breakdown["positions"] == TABLE


def test_the_graph_draws_each_stacks_table_and_norm():
    r = report(enc=", position: learned, embed_norm: true", dec=", position: learned, embed_norm: true")
    g = architecture_graph(r.models["m"])
    assert {"encoder.position_embedding", "decoder.position_embedding", "encoder.embed_norm",
            "decoder.embed_norm"} <= set(g.nodes)
    assert "position_embedding" not in g.nodes and "embed_norm" not in g.nodes


def test_embed_norm_false_in_a_stack_cannot_drop_the_shared_norm():
    (d,) = errors(top="embed_norm: true", enc=", embed_norm: false")
    assert d.code == "LMS133"
    assert d.message == ("`encoder { embed_norm: false }` cannot remove the embedding norm of 'm': the model's "
                         "`embed_norm: true` is one norm, shared by both stacks")
    assert d.help.startswith("remove `embed_norm` from the model")
    assert d.labels[0].message == "embed_norm: true"


def test_a_model_level_key_both_stacks_replace_is_lms134():
    both = ", position: learned, embed_norm: true"
    found = errors(top="position: learned, embed_norm: true", enc=both, dec=both)
    assert [d.code for d in found] == ["LMS134", "LMS134"]
    assert "reads the model's embedding norm" in found[0].message
    assert found[1].message.startswith("no stack of 'm' reads the model's `position`")
    assert found[1].help == "remove `position` from the model"
    assert errors(enc=both, dec=both) == []  # the default position is not a setting


def test_position_offset_is_read_by_a_stacks_own_table():
    text = MODEL.format(top=" position: rope,", enc=", position: learned", dec="")
    assert check_text(text, "m.lmspec").ok
    text = MODEL.format(top=" position: rope,", enc="", dec="")
    assert "LMS095" in {d.code for d in check_text(text, "m.lmspec").diagnostics}


# --- the import ----------------------------------------------------------------------------

BART = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=48, max_position_embeddings=24,
            pad_token_id=1)
FAMILIES = {
    "bart": (T.BartForConditionalGeneration, T.BartConfig(**BART)),
    "bart_bare": (T.BartModel, T.BartConfig(**BART)),
    "bart_scaled": (T.BartForConditionalGeneration, T.BartConfig(**BART, scale_embedding=True,
                                                                  activation_function="relu")),
}


ckpts = ckpts_fixture(FAMILIES, "bart")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bart_imports_exactly(ckpts, name):
    assert_imports_exactly(ckpts[name])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bart_logits_match(ckpts, name):
    assert_logits_match(ckpts[name])


def test_bart_spec_writes_the_per_stack_keys(ckpts):
    text = spec_from_hf(ckpts["bart"], "bart")
    assert "  encoder { layers: 2, attention: bidirectional, position: learned, embed_norm: true }" in text
    assert "heads: 2" in text.split("decoder {")[1]
    assert "\n  position:" not in text and "  position_offset: 2\n" in text and "  embed_norm: false\n" in text
    arch, _ = load_hf_model(ckpts["bart_scaled"])
    assert arch.embed_scale == pytest.approx(32**0.5) and arch.encoder.layers[0].activation == "relu"
    assert load_hf_model(ckpts["bart_bare"])[0].heads == ()


def test_a_nonzero_final_logits_bias_is_refused(ckpts, tmp_path):
    import shutil

    path = tmp_path / "biased"
    shutil.copytree(ckpts["bart"], path)
    tensors = load_file(path / "model.safetensors")
    tensors["final_logits_bias"] = torch.full((1, VOCAB), 0.5)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFImportError, match="final_logits_bias is not all zero"):
        load_hf_model(path)


@pytest.mark.parametrize("key, value", [("normalize_before", True), ("add_final_layer_norm", True),
                                        ("normalize_embedding", False), ("encoder_layerdrop", 0.1)])
def test_options_lmspec_cannot_build_are_refused_by_name(ckpts, key, value):
    config = {**read_hf_config(ckpts["bart"]), key: value}
    with pytest.raises(HFImportError, match=f"{key}={value!r}"):
        arch_from_hf_config(config, "m")



def test_export_picks_bart_and_refuses_what_no_family_has(ckpts):
    from lmspec.compiler.hf.export import HFExportError, export_family

    assert export_family(load_hf_model(ckpts["bart"])[0]) == ("bart", "BartForConditionalGeneration")
    assert export_family(load_hf_model(ckpts["bart_bare"])[0]) == ("bart", "BartModel")
    # a BART whose decoder reads a shared table is no BART
    half = check_text(BART_SPEC.format(scale="1.0").replace("heads: 2, d_ff: 48, position: learned, ",
                                                            "heads: 2, d_ff: 48, "), "half.lmspec")
    with pytest.raises(HFExportError, match=r"stack embeddings: encoder \{ position: learned \}, encoder \{ "
                       r"embed_norm: true \}, decoder \{ embed_norm: true \} \(bart has its own"):
        export_family(half.models["bart"])
    # a T5 in every other respect is refused too: its export would drop the encoder's own norm
    t5 = check_text("model t5 { arch: encoder_decoder, vocab: 100, context: 16, d_model: 32, heads: 4, "
                    "position: relative, norm: rmsnorm, attention_scale: none, bias: false, activation: relu, "
                    "tie_embeddings: true, head_scale: 0.17677669529663687, "
                    "encoder { layers: 1, embed_norm: true }, decoder { layers: 1 } }", "t5.lmspec")
    assert t5.ok, [(d.code, d.message) for d in t5.diagnostics]
    with pytest.raises(HFExportError, match=r"stack embeddings: encoder \{ embed_norm: true \}"):
        export_family(t5.models["t5"])


# --- the export ----------------------------------------------------------------------------

BART_SPEC = ("model bart {{ arch: encoder_decoder, vocab: 100, context: 24, d_model: 32, heads: 4, d_ff: 64, "
             "placement: post, final_norm: false, position_offset: 2, tie_embeddings: true, pad_id: 1, "
             "embed_scale: {scale}, encoder {{ layers: 2, position: learned, embed_norm: true }}, "
             "decoder {{ layers: 1, heads: 2, d_ff: 48, position: learned, embed_norm: true }} }}")


@pytest.mark.parametrize("scale", ["1.0", repr(32**0.5)])
def test_bart_exports_and_transformers_computes_the_same_logits(tmp_path, scale):
    from lmspec.compiler.hf.export import export_hf

    r = check_text(BART_SPEC.format(scale=scale), "bart.lmspec")
    assert r.ok, [(d.code, d.message) for d in r.diagnostics]
    arch = r.models["bart"]
    torch.manual_seed(0)
    model = build_model(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config, tensors = export_hf(arch, model.eval().state_dict())
    assert config["model_type"] == "bart" and config["scale_embedding"] is (scale != "1.0")
    tmp_path.joinpath("config.json").write_text(__import__("json").dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    hf, info = T.BartForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    dec = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, decoder_input_ids=dec).logits
        theirs = hf.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert arch_from_hf_config(config, "bart", tensor_names=tensors.keys()) == arch
