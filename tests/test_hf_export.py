"""Export to Hugging Face: tiny lmspec models (built from specs, and one trained 2 steps through
`lmspec.runtime.run`) written as config.json + safetensors + tokenizer must load with
transformers and give the same logits (padded batches, to 1e-4); the import must read the
export back as the same architecture; what no family expresses is refused, naming the feature
and the closest family; a failed export leaves nothing behind. Nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]
from safetensors.torch import save_file  # noqa: E402

from lmspec.cli import main  # noqa: E402
from lmspec.compiler.api import load_arch  # noqa: E402
from lmspec.compiler.build import build_model  # noqa: E402
from lmspec.compiler.hf import (  # noqa: E402
    HFExportError,
    export_family,
    export_hf,
    load_hf_model,
    spec_from_hf,
)
from lmspec.runtime.errors import RunError  # noqa: E402
from lmspec.runtime.export import export_run, export_tokenizer  # noqa: E402
from lmspec.runtime.tokenizers import BytesTokenizer, HFBackedTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()

VOCAB = 100
TOL = 1e-4

SPEC = """lmspec 1
model gpt2 { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: learned,
             norm: layernorm, activation: gelu_tanh, bias: true, tie_embeddings: true }
model gpt2_relu { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 48,
                  position: learned, activation: relu, tie_embeddings: false }
model llama { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 48, heads: 6, kv_heads: 2, d_ff: 96,
              position: rope(theta: 500_000), norm: rmsnorm, norm_eps: 1e-6, activation: swiglu, bias: false }
model llama_bias { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, head_dim: 16,
                   position: rope, norm: rmsnorm, activation: swiglu, bias: true, tie_embeddings: true }
model llama_bare { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: rope,
                   norm: rmsnorm, activation: swiglu, bias: false, head: none }
model mistral { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 48, heads: 6, kv_heads: 2, d_ff: 96,
                attention: sliding(window: 5), position: rope, norm: rmsnorm, activation: swiglu, bias: false }
model bert { arch: encoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
             norm: layernorm, norm_eps: 1e-12, placement: post, activation: gelu, segments: 2, pooler: true,
             embed_norm: true, final_norm: false, tie_embeddings: true, head: [mlm(transform: true), nsp], pad_id: 0 }
model bert_mlm { arch: encoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                 placement: post, segments: 2, embed_norm: true, final_norm: false, tie_embeddings: false,
                 head: mlm(transform: true) }
model t5 { arch: encoder_decoder, vocab: 100, context: 64, d_model: 32, heads: 4, head_dim: 8, d_ff: 64,
           attention_scale: none, position: relative(buckets: 32, max_distance: 128), norm: rmsnorm,
           norm_eps: 1e-6, activation: relu, bias: false, tie_embeddings: true, head_scale: 0.1767766952966369,
           pad_id: 0, encoder { layers: 2, attention: bidirectional }, decoder { layers: 3, attention: causal } }
model t5_v1_1 { arch: encoder_decoder, vocab: 100, context: 64, d_model: 32, heads: 4, head_dim: 8, d_ff: 64,
                attention_scale: none, position: relative(buckets: 16, max_distance: 64), norm: rmsnorm,
                activation: geglu_tanh, bias: false, tie_embeddings: true, pad_id: 0,
                encoder { layers: 2, attention: bidirectional }, decoder { layers: 2, attention: causal } }
"""

DECODERS = ["gpt2", "gpt2_relu", "llama", "llama_bias", "mistral"]
FAMILIES = {"gpt2": ("gpt2", "GPT2LMHeadModel"), "gpt2_relu": ("gpt2", "GPT2LMHeadModel"),
            "llama": ("llama", "LlamaForCausalLM"), "llama_bias": ("llama", "LlamaForCausalLM"),
            "llama_bare": ("llama", "LlamaModel"), "mistral": ("mistral", "MistralForCausalLM"),
            "bert": ("bert", "BertForPreTraining"), "bert_mlm": ("bert", "BertForMaskedLM"),
            "t5": ("t5", "T5ForConditionalGeneration"), "t5_v1_1": ("t5", "T5ForConditionalGeneration")}


def _model(name: str):
    """The spec's model with every parameter moved off its initial value (norms are not all
    one, biases not all zero), so a weight written under the wrong name shows in the logits."""
    arch = load_arch(SPEC, name)
    torch.manual_seed(0)
    model = build_model(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return arch, model.eval()


def _write(directory: Path, arch, model) -> Path:
    config, tensors = export_hf(arch, model.state_dict())
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name in FAMILIES:
        arch, model = _model(name)
        out[name] = (arch, model, _write(root / name, arch, model))
    return out


def _hf(path: Path):
    cls = getattr(transformers, json.loads((path / "config.json").read_text())["architectures"][0])
    model, info = cls.from_pretrained(path, output_loading_info=True)
    # every tensor transformers wants is in the file, and nothing else is
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def _inputs(T: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T - 4 :] = 0  # the second row is right-padded
    return ids, mask


# --- same logits in transformers ----------------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_model_exports_as_its_family(name):
    assert export_family(load_arch(SPEC, name)) == FAMILIES[name]


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_logits_match_transformers(exported, name):
    arch, model, path = exported[name]
    ids, mask = _inputs()
    real = mask.bool()
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask).logits, _hf(path)(ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)


def test_mistral_window_is_shorter_than_the_input(exported):
    """Without the sliding window the logits differ, so the comparison above tests it."""
    _, model, path = exported["mistral"]
    config = json.loads((path / "config.json").read_text())
    assert config["sliding_window"] == 5 and config["model_type"] == "mistral"
    hf = _hf(path)
    hf.config.sliding_window = None
    ids, _ = _inputs()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() > 1e-3


def test_a_bare_decoder_exports_its_hidden_states(exported):
    _, model, path = exported["llama_bare"]
    ids, mask = _inputs()
    real = mask.bool()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).hidden
        theirs = _hf(path)(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)


def test_bert_pretraining_mlm_and_nsp_logits_match(exported):
    _, model, path = exported["bert"]
    ids, mask = _inputs()
    segments = torch.zeros_like(ids)
    segments[:, 6:] = 1
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, segment_ids=segments)
        theirs = _hf(path)(ids, attention_mask=mask, token_type_ids=segments)
    real = mask.bool()
    torch.testing.assert_close(ours.logits[real], theirs.prediction_logits[real], atol=TOL, rtol=0)
    torch.testing.assert_close(ours.nsp_logits, theirs.seq_relationship_logits, atol=TOL, rtol=0)


def test_an_untied_bert_mlm_keeps_its_own_decoder(exported):
    _, model, path = exported["bert_mlm"]
    ids, mask = _inputs()
    hf = _hf(path)
    assert hf.cls.predictions.decoder.weight.data_ptr() != hf.bert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["t5", "t5_v1_1"])
def test_t5_logits_match_transformers(exported, name):
    _, model, path = exported[name]
    ids, mask = _inputs()
    decoder_ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        theirs = _hf(path)(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


def test_t5_v1_0_scales_its_tied_head_and_v1_1_does_not(exported):
    assert json.loads((exported["t5"][2] / "config.json").read_text())["scale_decoder_outputs"] is True
    assert json.loads((exported["t5_v1_1"][2] / "config.json").read_text())["scale_decoder_outputs"] is False


def test_tensors_use_the_family_names_and_tied_weights_are_written_once(exported):
    from safetensors import safe_open

    def names(name):
        with safe_open(str(exported[name][2] / "model.safetensors"), "pt") as f:
            return set(f.keys())

    gpt2 = names("gpt2")
    assert "transformer.wte.weight" in gpt2 and "lm_head.weight" not in gpt2  # tied: the embedding only
    with safe_open(str(exported["gpt2"][2] / "model.safetensors"), "pt") as f:
        # Conv1D stores (in, out): c_attn is (d_model, 3 * d_model)
        assert tuple(f.get_slice("transformer.h.0.attn.c_attn.weight").get_shape()) == (32, 96)
    llama = names("llama")
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight", "lm_head.weight"} <= llama
    assert "model.embed_tokens.weight" in names("llama_bias") and "lm_head.weight" not in names("llama_bias")
    assert "layers.0.self_attn.q_proj.weight" in names("llama_bare")  # the bare class has no prefix
    assert "cls.predictions.bias" in names("bert") and "shared.weight" in names("t5")


# --- the import reads the export back -----------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_import_hf_of_the_export_gives_back_the_same_arch(exported, name):
    arch, model, path = exported[name]
    assert load_arch(spec_from_hf(path, name), name) == arch
    _, back = load_hf_model(path)
    for (a, x), (b, y) in zip(model.state_dict().items(), back.state_dict().items()):
        assert a == b and torch.equal(x, y), a


# --- what no family expresses ---------------------------------------------------------------

REFUSED = """lmspec 1
model partly_sliding { arch: decoder, vocab: 100, context: 64, layers: 4, d_model: 32, heads: 4, position: rope,
                       norm: rmsnorm, activation: swiglu, bias: false, layer 0..1 { attention: sliding(window: 8) } }
model alibi { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: alibi,
              norm: rmsnorm, activation: swiglu, bias: false }
model reward { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: rope,
               norm: rmsnorm, activation: swiglu, bias: false, head: scalar }
model wide_layer { arch: decoder, vocab: 100, context: 64, layers: 3, d_model: 32, heads: 4, position: rope,
                   norm: rmsnorm, activation: swiglu, bias: false, layer 1 { d_ff: 256 } }
model biased_window { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: rope,
                      attention: sliding(window: 8), norm: rmsnorm, activation: swiglu, bias: true }
model gated_gpt { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: learned,
                  activation: swiglu }
model untied_t5 { arch: encoder_decoder, vocab: 100, context: 64, d_model: 32, heads: 4, attention_scale: none,
                  position: relative(buckets: 32, max_distance: 128), norm: rmsnorm, activation: relu, bias: false,
                  tie_embeddings: false, encoder { layers: 1, attention: bidirectional },
                  decoder { layers: 1, attention: causal } }
model pre_bert { arch: encoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, placement: pre,
                 segments: 2, embed_norm: true, head: mlm(transform: true) }
"""


@pytest.mark.parametrize(
    ("name", "family", "gap"),
    [
        ("partly_sliding", "mistral",
         "attention: sliding(window: 8) on layers 0..1, causal on layers 2..3 (mistral has one sliding(window) "
         "on every layer)"),
        ("alibi", "mpt", "norm: rmsnorm (mpt has layernorm)"),
        ("reward", "llama", "head: scalar(pool: last) (llama has lm or none)"),
        ("wide_layer", "llama",
         "d_ff differs between layers (128 on layer 0, 256 on layer 1, 128 on layer 2); llama has one d_ff for "
         "every layer"),
        ("biased_window", "mistral", "bias: true (mistral has no biases)"),
        ("gated_gpt", "gpt2", "activation: swiglu (gpt2 has an ungated one: gelu, gelu_tanh, relu or silu)"),
        ("untied_t5", "t5", "tie_embeddings: false (t5 has true: transformers 5 always ties T5's lm_head)"),
        ("pre_bert", "bert", "placement: pre (bert has post)"),
    ],
)
def test_an_inexpressible_architecture_is_refused_naming_the_feature(name, family, gap):
    arch = load_arch(REFUSED, name)
    with pytest.raises(HFExportError) as info:
        export_family(arch)
    err = info.value
    assert err.family == family and gap in err.gaps, err.gaps
    assert f"The closest is {family} (" in str(err) and gap in str(err)
    assert "never an approximation" in err.help
    with pytest.raises(HFExportError):  # the whole export refuses too, before any tensor is written
        export_hf(arch, build_model(arch).state_dict())


def test_weights_of_another_model_are_refused():
    arch, _ = _model("llama")
    _, other = _model("llama_bias")
    with pytest.raises(HFExportError, match=r"do not belong to model 'llama'") as info:
        export_hf(arch, other.state_dict())
    assert "unexpected: decoder.layers.0.attn.o_proj.bias" in str(info.value)


def test_a_field_the_family_checks_forget_is_caught_by_the_import(exported):
    """The import of the written config must give the architecture back: a difference the
    family function does not look at (here an embedding dropout unlike the layers') refuses."""
    arch, model, _ = exported["llama"]
    odd = dataclasses.replace(arch, dropout=0.3)
    with pytest.raises(HFExportError, match=r"import as a different architecture:\n  - dropout: 0.3 in the model"):
        export_hf(odd, model.state_dict())


# --- tokenizers -----------------------------------------------------------------------------

TEXTS = ["the cat sat  on\n a mat", "é 日本 🙂 <0x41> tab\there", ""]


def test_a_bytes_tokenizer_exports_with_the_same_ids(tmp_path):
    tok = BytesTokenizer(["pad", "bos", "eos"], sentinels=2)
    specials = export_tokenizer(tok, tmp_path, context=64)
    assert specials == {"pad": 256, "bos": 257, "eos": 258}
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert hf(text)["input_ids"] == tok.encode(text) == list(text.encode("utf-8"))
        assert hf.decode(tok.encode(text)) == text
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (256, 257, 258)
    assert hf.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"]) == tok.sentinels == [259, 260]
    assert hf.model_max_length == 64 and len(hf) == tok.vocab_size
    # a special's spelling in the text: a special to transformers, characters to lmspec, unless asked
    assert hf("a<eos>")["input_ids"] == [97, 258]
    as_text = transformers.AutoTokenizer.from_pretrained(tmp_path, split_special_tokens=True)
    assert as_text("a<eos>")["input_ids"] == tok.encode("a<eos>") == list(b"a<eos>")


def test_an_hf_tokenizer_keeps_its_own_config_files(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3, "</s>": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    original = tmp_path / "original"
    original.mkdir()
    raw.save(str(original / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "eos_token": "</s>",
              "unk_token": "[UNK]", "chat_template": "{{ messages[0]['content'] }}"}
    (original / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFBackedTokenizer(Tokenizer.from_file(str(original / "tokenizer.json")), "hf", {"pad": 1, "eos": 4}, [])
    out = tmp_path / "out"
    out.mkdir()
    export_tokenizer(tok, out, original=original)
    assert json.loads((out / "tokenizer_config.json").read_text()) == config  # copied, not rewritten
    assert not (out / "lmspec.json").exists()
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert hf("hello world nope")["input_ids"] == tok.encode("hello world nope") == [2, 3, 0]


# --- from a run directory -------------------------------------------------------------------

RUN_SPEC = """lmspec 1
tokenizer tok { kind: bpe(vocab: 300), specials: [pad, eos] }
data d { source: text("corpus.txt"), validation: 10% }
model m { vocab: tok.vocab_size, context: 32, layers: 2, d_model: 32, heads: 4, kv_heads: 2, position: rope,
          norm: rmsnorm, activation: swiglu, bias: false, tie_embeddings: true }
train pretrain { model: m, objective: clm, data: d, steps: 2, batch: 2, log_every: 1, eval_every: 2 }
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run that trained a tiny decoder with a learned BPE for 2 steps."""
    from lmspec.runtime.api import run
    from lmspec.runtime.progress import Progress

    root = tmp_path_factory.mktemp("run")
    words = "the cat sat on a mat and then it ran to the park where a dog was happy".split()
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (40,), generator=g)) for _ in range(40)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    (root / "spec.lmspec").write_text(RUN_SPEC)
    mp = pytest.MonkeyPatch()
    mp.setenv("LMSPEC_CACHE", str(root / "cache"))
    try:
        return run(root / "spec.lmspec", out=root / "run", progress=Progress(quiet=True)).path
    finally:
        mp.undo()


def test_export_hf_command_writes_a_run_that_transformers_loads(trained, tmp_path, capsys):
    from lmspec.runtime.api import open_run

    out = tmp_path / "hf" / "m"
    assert main(["export-hf", str(trained), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    r = open_run(trained)
    tok, model = r.tokenizer("pretrain"), r.model("pretrain")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = ["the cat sat on a mat", "a dog ran"]
    ids = [tok.encode(t) for t in text]
    assert [hf_tok(t)["input_ids"] for t in text] == ids
    assert (hf_tok.pad_token_id, hf_tok.eos_token_id) == (tok.pad_id, tok.eos_id)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["eos_token_id"] == tok.eos_id
    batch = hf_tok(text, padding=True, return_tensors="pt")  # right padding with the run's pad token
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ours = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = hf(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)
    assert load_arch(spec_from_hf(out, "m"), "m") == load_arch_from_run(trained)


def load_arch_from_run(run_dir: Path):
    from lmspec.compiler.arch import arch_from_dict

    return arch_from_dict(json.loads((run_dir / "stages" / "pretrain" / "final" / "arch.json").read_text()))


def test_an_existing_target_is_refused_unless_empty(trained, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="exists and is not empty: export never overwrites"):
        export_run(trained, full)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        export_run(trained, file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_run(trained, empty) == empty and (empty / "model.safetensors").is_file()


def test_an_unknown_stage_is_named(trained, tmp_path):
    with pytest.raises(RunError, match="has no stage 'pretrian'") as info:
        export_run(trained, tmp_path / "x", stage="pretrian")
    assert "pretrain" in info.value.help


def test_a_failure_mid_write_leaves_nothing(trained, tmp_path, monkeypatch):
    import safetensors.torch

    def half_write(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError, match="No space left"):
        export_run(trained, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary directory


def test_an_inexpressible_run_is_refused_before_anything_is_written(trained, tmp_path, capsys):
    """A run whose model uses ALiBi (no parameters change: only arch.json is edited here)."""
    run_dir = shutil.copytree(trained, tmp_path / "run")
    path = run_dir / "stages" / "pretrain" / "final" / "arch.json"
    arch = json.loads(path.read_text())
    for layer in arch["decoder"]["layers"]:
        layer["position"]["kind"] = "alibi"
    arch["position"]["kind"] = "alibi"
    path.write_text(json.dumps(arch))
    out = tmp_path / "out"
    assert main(["export-hf", str(run_dir), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "The closest is mpt (MptForCausalLM)" in err and "norm: rmsnorm (mpt has layernorm)" in err
    assert "= help: export writes exact equivalents only" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]

