"""specs/reference/*.lmspec describe published models exactly.

Each spec is checked three ways against the Hugging Face model it mirrors, built on the meta
device from the published config (written out below, nothing is downloaded): the spec lowers
to the ArchConfig that `arch_from_hf_config` makes of that config, and lmspec's parameter
count equals transformers' to the parameter, both from a model built on "meta" and from the
analytic count. Tied weights count once on both sides.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]

from lmspec.compiler.analysis import count_parameters  # noqa: E402
from lmspec.compiler.api import load_arch  # noqa: E402
from lmspec.compiler.build import build_model  # noqa: E402
from lmspec.compiler.hf import arch_from_hf_config  # noqa: E402

REFERENCE = Path(__file__).resolve().parent.parent / "specs" / "reference"

_GPT2 = dict(
    model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=50257, n_positions=1024, n_ctx=1024,
    activation_function="gelu_new", layer_norm_epsilon=1e-05, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
    bos_token_id=50256, eos_token_id=50256,
)
_BERT = dict(
    # the hub's bert-base-uncased names BertForMaskedLM; lmspec's references mirror the pretraining model
    model_type="bert", architectures=["BertForPreTraining"], vocab_size=30522, max_position_embeddings=512,
    type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    layer_norm_eps=1e-12, pad_token_id=0, position_embedding_type="absolute",
)
_T5 = dict(
    model_type="t5", architectures=["T5ForConditionalGeneration"], vocab_size=32128, d_kv=64, n_positions=512,
    relative_attention_num_buckets=32, dropout_rate=0.1, layer_norm_epsilon=1e-06, feed_forward_proj="relu",
    eos_token_id=1, pad_token_id=0, decoder_start_token_id=0,
)
_LLAMA = dict(
    model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu", hidden_size=4096,
    rms_norm_eps=1e-05, rope_scaling=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)
_LLAMA3 = dict(_LLAMA, vocab_size=128256, max_position_embeddings=8192, num_key_value_heads=8,
               rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)

# name -> (the published config.json, as far as it decides the architecture; the parameter count)
PUBLISHED: dict[str, tuple[dict, int]] = {
    # openai-community/gpt2, gpt2-medium, gpt2-large, gpt2-xl
    "gpt2_small": (dict(_GPT2, n_embd=768, n_layer=12, n_head=12), 124_439_808),
    "gpt2_medium": (dict(_GPT2, n_embd=1024, n_layer=24, n_head=16), 354_823_168),
    "gpt2_large": (dict(_GPT2, n_embd=1280, n_layer=36, n_head=20), 774_030_080),
    "gpt2_xl": (dict(_GPT2, n_embd=1600, n_layer=48, n_head=25), 1_557_611_200),
    # google-bert/bert-base-uncased, bert-large-uncased
    "bert_base": (dict(_BERT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072), 110_106_428),
    "bert_large": (dict(_BERT, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096), 336_226_108),
    # google-t5/t5-small, t5-base
    "t5_small": (dict(_T5, d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8), 60_506_624),
    "t5_base": (dict(_T5, d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12), 222_903_552),
    # meta-llama/Llama-2-7b-hf, Meta-Llama-3-8B, Meta-Llama-3-70B
    "llama2_7b": (dict(_LLAMA, vocab_size=32000, intermediate_size=11008, max_position_embeddings=4096,
                       num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=32, rope_theta=10000.0),
                  6_738_415_616),
    "llama3_8b": (dict(_LLAMA3, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=32),
                  8_030_261_248),
    "llama3_70b": (dict(_LLAMA3, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                        num_hidden_layers=80), 70_553_706_496),
    # meta-llama/Llama-3.1-8B: Llama 3 8B with llama3 rope scaling to a 128k context
    "llama3_1_8b": (dict(_LLAMA3, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=32,
                         max_position_embeddings=131072,
                         rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
                    8_030_261_248),
    # Qwen/Qwen2.5-7B: biases on q, k and v only
    "qwen2_5_7b": (dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu", hidden_size=3584,
                        intermediate_size=18944, max_position_embeddings=131072, max_window_layers=28,
                        num_attention_heads=28, num_hidden_layers=28, num_key_value_heads=4, rms_norm_eps=1e-06,
                        rope_theta=1000000.0, sliding_window=131072, use_sliding_window=False,
                        tie_word_embeddings=False, vocab_size=152064, bos_token_id=151643, eos_token_id=151643),
                   7_615_616_512),
    # Qwen/Qwen3-8B: RMSNorm on each query and key head (qk_norm)
    "qwen3_8b": (dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], attention_bias=False, head_dim=128,
                      hidden_act="silu", hidden_size=4096, intermediate_size=12288, max_position_embeddings=40960,
                      max_window_layers=36, num_attention_heads=32, num_hidden_layers=36, num_key_value_heads=8,
                      rms_norm_eps=1e-06, rope_theta=1000000, sliding_window=None, use_sliding_window=False,
                      tie_word_embeddings=False, vocab_size=151936, bos_token_id=151643, eos_token_id=151645),
                 8_190_735_360),
    # mistralai/Mixtral-8x7B-v0.1: 8 experts, 2 active per token (12,879,925,248 active parameters)
    "mixtral_8x7b": (dict(model_type="mixtral", architectures=["MixtralForCausalLM"], hidden_act="silu",
                          hidden_size=4096, intermediate_size=14336, max_position_embeddings=32768,
                          num_attention_heads=32, num_experts_per_tok=2, num_hidden_layers=32, num_key_value_heads=8,
                          num_local_experts=8, output_router_logits=False, rms_norm_eps=1e-05, rope_theta=1000000.0,
                          router_aux_loss_coef=0.02, sliding_window=None, tie_word_embeddings=False, vocab_size=32000,
                          bos_token_id=1, eos_token_id=2), 46_702_792_704),
    # microsoft/Phi-3-mini-4k-instruct: fused qkv and gate_up projections, a sliding window of 2047
    "phi3_mini": (dict(model_type="phi3", architectures=["Phi3ForCausalLM"], attention_dropout=0.0, embd_pdrop=0.0,
                       resid_pdrop=0.0, hidden_act="silu", hidden_size=3072, intermediate_size=8192,
                       max_position_embeddings=4096, original_max_position_embeddings=4096, num_attention_heads=32,
                       num_hidden_layers=32, num_key_value_heads=32, rms_norm_eps=1e-05, rope_scaling=None,
                       rope_theta=10000.0, sliding_window=2047, tie_word_embeddings=False, vocab_size=32064,
                       bos_token_id=1, eos_token_id=32000, pad_token_id=32000), 3_821_079_552),
    # google/gemma-2-9b: sandwich norms, capped scores and logits, a 4096 window on every other layer
    "gemma2_9b": (dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"], attention_bias=False,
                       attention_dropout=0.0, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                       head_dim=256, hidden_activation="gelu_pytorch_tanh", hidden_size=3584,
                       intermediate_size=14336, max_position_embeddings=8192, num_attention_heads=16,
                       num_hidden_layers=42, num_key_value_heads=8, query_pre_attn_scalar=256, rms_norm_eps=1e-06,
                       rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=True, vocab_size=256000,
                       bos_token_id=2, eos_token_id=1, pad_token_id=0), 9_241_705_984),
    # mistralai/Mistral-7B-v0.1
    "mistral_7b": (dict(model_type="mistral", architectures=["MistralForCausalLM"], vocab_size=32000,
                        hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=32,
                        num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096,
                        rope_theta=10000.0, rms_norm_eps=1e-05, hidden_act="silu", tie_word_embeddings=False,
                        bos_token_id=1, eos_token_id=2), 7_241_732_096),
}


def _hf_config(config: dict):
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    return transformers.AutoConfig.for_model(config["model_type"], **fields)


def _hf_parameter_count(config: dict) -> int:
    cls = getattr(transformers, config["architectures"][0])
    with torch.device("meta"):
        model = cls(_hf_config(config))
    return sum(p.numel() for p in model.parameters())  # parameters() lists a tied weight once


def test_every_reference_spec_is_checked():
    assert sorted(p.stem for p in REFERENCE.glob("*.lmspec")) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_reference_spec_mirrors_the_published_model(name):
    config, published = PUBLISHED[name]
    path = REFERENCE / f"{name}.lmspec"
    assert path.read_text().startswith("lmspec 1\n")
    arch = load_arch(path, name)

    # the spec says what the published config says
    assert arch == arch_from_hf_config(config, name)

    # and has the same parameters, to the last one
    assert _hf_parameter_count(config) == published
    model = build_model(arch, device="meta")
    assert sum(p.numel() for p in model.parameters()) == published
    assert count_parameters(arch).total == published
