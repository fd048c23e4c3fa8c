"""Which Hugging Face tensor fills which lmspec parameter, per model family.

A mapping is a list of rules, each an lmspec parameter name pattern and the HF tensor(s)
that fill it, written with two placeholders: `{i}` a layer index, `{wb}` weight or bias.
Several sources are concatenated along dim 0 (q, k and v become lmspec's fused `qkv_proj`,
rows [q | k | v]); a source may list alternatives separated by `|` (the first present is
used, the others are tied copies and are accepted unused). A rule may also take one piece of a
fused source (Phi-3's [gate | up]). `{p}` is the prefix of the base
model's tensors, which depends on the class that saved them: "transformer." in
GPT2LMHeadModel, nothing in GPT2Model or OpenAI's original upload.

Nothing here imports torch: `docs/huggingface.md` prints these tables.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection
from dataclasses import dataclass

from ..arch import GATED_ACTIVATIONS, ArchConfig

__all__ = ["Rule", "Mapping", "hf_mapping"]


@dataclass(frozen=True)
class Rule:
    target: str  # lmspec parameter pattern, e.g. "decoder.layers.{i}.attn_norm.{wb}"
    sources: tuple[str, ...]  # HF name patterns; several are concatenated along dim 0
    transpose: bool = False  # GPT-2's Conv1D stores (in, out); nn.Linear wants (out, in)
    # GPT-NeoX and BLOOM fuse q, k and v head by head, rows [q_0 k_0 v_0 | q_1 k_1 v_1 | ...], and
    # Falcon key/value group by group, [q_0 .. q_r-1 k_0 v_0 | ...] (r query heads per group);
    # lmspec's fused projection has all q rows, then all k, then all v
    per_head: bool = False
    # Phi-3 fuses [gate | up] into one tensor: (part, parts) takes piece `part` of the source cut
    # into `parts` equal pieces along dim 0, as transformers' chunk(parts) does
    split: tuple[int, int] | None = None

    def match(self, name: str) -> dict[str, str] | None:
        found = _compile(self.target).fullmatch(name)
        return found.groupdict() if found else None


@dataclass(frozen=True)
class Mapping:
    rules: tuple[Rule, ...]
    prefix: str = ""  # the candidate `{p}`: used when some tensor name starts with it
    ignored: tuple[str, ...] = ()  # regexes of HF tensors that are buffers, not weights
    # regexes of HF buffers that lmspec has no place for but that change the output unless all
    # zero (BART's final_logits_bias): loaded when all zero (then they add nothing), else refused
    zeros: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()  # (regex, replacement): legacy names -> current ones
    head_tensors: str = r"^lm_head\."  # regex of the HF tensors that belong to output heads

    def resolve_prefix(self, names: Collection[str]) -> str:
        return self.prefix if self.prefix and any(n.startswith(self.prefix) for n in names) else ""

    def normalize(self, name: str) -> str:
        for pattern, replacement in self.renames:
            name = re.sub(pattern, replacement, name)
        return name

    def is_ignored(self, name: str) -> bool:
        return any(re.search(pattern, name) for pattern in self.ignored + self.zeros)

    def must_be_zero(self, name: str) -> bool:
        return any(re.search(pattern, name) for pattern in self.zeros)

    def sources_for(self, target: str, prefix: str) -> tuple[Rule, tuple[tuple[str, ...], ...]] | None:
        """The rule for an lmspec parameter and its sources, each a tuple of alternatives."""
        for rule in self.rules:
            groups = rule.match(target)
            if groups is not None:
                return rule, tuple(
                    tuple(alt.format(p=prefix, **groups) for alt in source.split("|")) for source in rule.sources
                )
        return None


_PLACEHOLDERS = {"{i}": r"(?P<i>\d+)", "{wb}": r"(?P<wb>weight|bias)"}


@functools.cache  # every parameter of a model is matched against every rule: build each regex once
def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern)
    for placeholder, group in _PLACEHOLDERS.items():
        regex = regex.replace(re.escape(placeholder), group)
    return re.compile(regex)


def R(target: str, *sources: str, transpose: bool = False, per_head: bool = False,
      split: tuple[int, int] | None = None) -> Rule:
    return Rule(target, sources, transpose, per_head, split)


def _gpt2(arch: ArchConfig) -> Mapping:
    head = "lm_head.weight"
    return Mapping(
        rules=(
            R("embed.weight", "{p}wte.weight" + (f"|{head}" if arch.tie_embeddings else "")),
            R("pos_embed.weight", "{p}wpe.weight"),
            R("decoder.layers.{i}.attn_norm.{wb}", "{p}h.{i}.ln_1.{wb}"),
            # c_attn is already fused [q | k | v] along its output dimension
            R("decoder.layers.{i}.attn.qkv_proj.weight", "{p}h.{i}.attn.c_attn.weight", transpose=True),
            R("decoder.layers.{i}.attn.qkv_proj.bias", "{p}h.{i}.attn.c_attn.bias"),
            R("decoder.layers.{i}.attn.o_proj.weight", "{p}h.{i}.attn.c_proj.weight", transpose=True),
            R("decoder.layers.{i}.attn.o_proj.bias", "{p}h.{i}.attn.c_proj.bias"),
            R("decoder.layers.{i}.mlp_norm.{wb}", "{p}h.{i}.ln_2.{wb}"),
            R("decoder.layers.{i}.mlp.up_proj.weight", "{p}h.{i}.mlp.c_fc.weight", transpose=True),
            R("decoder.layers.{i}.mlp.up_proj.bias", "{p}h.{i}.mlp.c_fc.bias"),
            R("decoder.layers.{i}.mlp.down_proj.weight", "{p}h.{i}.mlp.c_proj.weight", transpose=True),
            R("decoder.layers.{i}.mlp.down_proj.bias", "{p}h.{i}.mlp.c_proj.bias"),
            R("decoder.final_norm.{wb}", "{p}ln_f.{wb}"),
            R("lm_head.weight", head),
        ),
        prefix="transformer.",
        # the causal-mask buffers older versions of transformers saved with the weights
        ignored=(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$",),
    )


def _bert(arch: ArchConfig) -> Mapping:
    layer = "{p}encoder.layer.{i}."
    decoder = "cls.predictions.decoder.weight"
    return Mapping(
        rules=(
            R("embed.weight", "{p}embeddings.word_embeddings.weight" + (f"|{decoder}" if arch.tie_embeddings else "")),
            R("pos_embed.weight", "{p}embeddings.position_embeddings.weight"),
            R("segment_embed.weight", "{p}embeddings.token_type_embeddings.weight"),
            R("embed_norm.{wb}", "{p}embeddings.LayerNorm.{wb}"),
            R(
                "encoder.layers.{i}.attn.qkv_proj.{wb}",
                layer + "attention.self.query.{wb}",
                layer + "attention.self.key.{wb}",
                layer + "attention.self.value.{wb}",
            ),
            R("encoder.layers.{i}.attn.o_proj.{wb}", layer + "attention.output.dense.{wb}"),
            # post-norm: BERT's "output" LayerNorms are lmspec's norms after each residual add
            R("encoder.layers.{i}.attn_norm.{wb}", layer + "attention.output.LayerNorm.{wb}"),
            R("encoder.layers.{i}.mlp.up_proj.{wb}", layer + "intermediate.dense.{wb}"),
            R("encoder.layers.{i}.mlp.down_proj.{wb}", layer + "output.dense.{wb}"),
            R("encoder.layers.{i}.mlp_norm.{wb}", layer + "output.LayerNorm.{wb}"),
            R("pooler.dense.{wb}", "{p}pooler.dense.{wb}"),
            R("mlm_head.dense.{wb}", "cls.predictions.transform.dense.{wb}"),
            R("mlm_head.norm.{wb}", "cls.predictions.transform.LayerNorm.{wb}"),
            R("mlm_head.decoder.weight", decoder),
            # the decoder's bias is a separate parameter tied to cls.predictions.bias
            R("mlm_head.decoder.bias", "cls.predictions.bias|cls.predictions.decoder.bias"),
            R("nsp_head.{wb}", "cls.seq_relationship.{wb}"),
        ),
        prefix="bert.",
        head_tensors=r"^cls\.",
        ignored=(r"(^|\.)embeddings\.(position_ids|token_type_ids)$",),
        # Google's TF-converted checkpoints name LayerNorm parameters gamma and beta
        renames=((r"LayerNorm\.gamma$", "LayerNorm.weight"), (r"LayerNorm\.beta$", "LayerNorm.bias")),
    )


def _roberta(arch: ArchConfig) -> Mapping:
    """BERT's names under "roberta.", with the MLM head's own."""
    decoder = "lm_head.decoder.weight"
    body = tuple(r for r in _bert(arch).rules if not r.target.startswith(("embed.", "mlm_head.", "nsp_head.")))
    return Mapping(
        rules=(
            R("embed.weight", "{p}embeddings.word_embeddings.weight" + (f"|{decoder}" if arch.tie_embeddings else "")),
            *body,
            R("mlm_head.dense.{wb}", "lm_head.dense.{wb}"),
            R("mlm_head.norm.{wb}", "lm_head.layer_norm.{wb}"),
            R("mlm_head.decoder.weight", decoder),
            # the decoder's bias is a separate parameter tied to lm_head.bias
            R("mlm_head.decoder.bias", "lm_head.bias|lm_head.decoder.bias"),
        ),
        prefix="roberta.",
        ignored=_bert(arch).ignored,
    )


def _opt(arch: ArchConfig) -> Mapping:
    layer = "{p}decoder.layers.{i}."
    attn = layer + "self_attn."
    return Mapping(
        rules=(
            R("embed.weight", "{p}decoder.embed_tokens.weight" + ("|lm_head.weight" if arch.tie_embeddings else "")),
            R("pos_embed.weight", "{p}decoder.embed_positions.weight"),
            R("decoder.layers.{i}.attn_norm.{wb}", layer + "self_attn_layer_norm.{wb}"),
            R("decoder.layers.{i}.attn.qkv_proj.{wb}",
              attn + "q_proj.{wb}", attn + "k_proj.{wb}", attn + "v_proj.{wb}"),
            R("decoder.layers.{i}.attn.o_proj.{wb}", attn + "out_proj.{wb}"),
            R("decoder.layers.{i}.mlp_norm.{wb}", layer + "final_layer_norm.{wb}"),
            R("decoder.layers.{i}.mlp.up_proj.{wb}", layer + "fc1.{wb}"),
            R("decoder.layers.{i}.mlp.down_proj.{wb}", layer + "fc2.{wb}"),
            R("decoder.final_norm.{wb}", "{p}decoder.final_layer_norm.{wb}"),
            R("lm_head.weight", "lm_head.weight"),
        ),
        prefix="model.",
    )


def _distilbert(arch: ArchConfig) -> Mapping:
    layer = "{p}transformer.layer.{i}."
    attn = layer + "attention."
    projector = "vocab_projector.weight"
    return Mapping(
        rules=(
            R("embed.weight",
              "{p}embeddings.word_embeddings.weight" + (f"|{projector}" if arch.tie_embeddings else "")),
            R("pos_embed.weight", "{p}embeddings.position_embeddings.weight"),
            R("embed_norm.{wb}", "{p}embeddings.LayerNorm.{wb}"),
            R("encoder.layers.{i}.attn.qkv_proj.{wb}", attn + "q_lin.{wb}", attn + "k_lin.{wb}", attn + "v_lin.{wb}"),
            R("encoder.layers.{i}.attn.o_proj.{wb}", attn + "out_lin.{wb}"),
            R("encoder.layers.{i}.attn_norm.{wb}", layer + "sa_layer_norm.{wb}"),  # post-norm, as BERT
            R("encoder.layers.{i}.mlp.up_proj.{wb}", layer + "ffn.lin1.{wb}"),
            R("encoder.layers.{i}.mlp.down_proj.{wb}", layer + "ffn.lin2.{wb}"),
            R("encoder.layers.{i}.mlp_norm.{wb}", layer + "output_layer_norm.{wb}"),
            R("mlm_head.dense.{wb}", "vocab_transform.{wb}"),
            R("mlm_head.norm.{wb}", "vocab_layer_norm.{wb}"),
            R("mlm_head.decoder.{wb}", "vocab_projector.{wb}"),
        ),
        prefix="distilbert.",
        head_tensors=r"^vocab_(transform|layer_norm|projector)\.",
        ignored=(r"(^|\.)embeddings\.position_ids$",),
    )


def _t5(arch: ArchConfig) -> Mapping:
    embed = "shared.weight|encoder.embed_tokens.weight|decoder.embed_tokens.weight"
    if arch.tie_embeddings:
        embed += "|lm_head.weight"
    rules = [
        R("embed.weight", embed),
        R("lm_head.weight", "lm_head.weight"),
    ]
    for stack, ff in (("encoder", 1), ("decoder", 2)):
        config = arch.encoder if stack == "encoder" else arch.decoder
        gated = config is not None and config.layers[0].activation in GATED_ACTIVATIONS
        block = stack + ".block.{i}.layer."
        attn = block + "0.SelfAttention."
        dense = f"{block}{ff}.DenseReluDense."
        rules += [
            # T5 keeps one bias table per stack, in block 0, and reuses it in every layer
            R(
                f"{stack}.rel_bias.embed.weight",
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            ),
            R(f"{stack}.layers.{{i}}.attn_norm.weight", block + "0.layer_norm.weight"),
            R(f"{stack}.layers.{{i}}.attn.qkv_proj.weight", attn + "q.weight", attn + "k.weight", attn + "v.weight"),
            R(f"{stack}.layers.{{i}}.attn.o_proj.weight", attn + "o.weight"),
            R(f"{stack}.layers.{{i}}.mlp_norm.weight", f"{block}{ff}.layer_norm.weight"),
            R(f"{stack}.layers.{{i}}.mlp.down_proj.weight", dense + "wo.weight"),
            R(f"{stack}.final_norm.weight", f"{stack}.final_layer_norm.weight"),
        ]
        if gated:  # wi_0 goes through the activation, wi_1 is the linear half
            rules += [
                R(f"{stack}.layers.{{i}}.mlp.gate_proj.weight", dense + "wi_0.weight"),
                R(f"{stack}.layers.{{i}}.mlp.up_proj.weight", dense + "wi_1.weight"),
            ]
        else:
            rules.append(R(f"{stack}.layers.{{i}}.mlp.up_proj.weight", dense + "wi.weight"))
    cross = "decoder.block.{i}.layer.1.EncDecAttention."
    rules += [
        R("decoder.layers.{i}.cross_norm.weight", "decoder.block.{i}.layer.1.layer_norm.weight"),
        R("decoder.layers.{i}.cross_attn.q_proj.weight", cross + "q.weight"),
        R("decoder.layers.{i}.cross_attn.kv_proj.weight", cross + "k.weight", cross + "v.weight"),
        R("decoder.layers.{i}.cross_attn.o_proj.weight", cross + "o.weight"),
    ]
    # HF itself ignores this one: cross-attention has no position bias, but old checkpoints hold one
    return Mapping(
        rules=tuple(rules),
        ignored=(r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",),
    )


def _bart(arch: ArchConfig) -> Mapping:
    embed = "{p}shared.weight|{p}encoder.embed_tokens.weight|{p}decoder.embed_tokens.weight"
    if arch.tie_embeddings:
        embed += "|lm_head.weight"
    rules = [R("embed.weight", embed), R("lm_head.weight", "lm_head.weight")]
    for stack in ("encoder", "decoder"):
        hf = "{p}" + stack + "."
        layer = hf + "layers.{i}."
        attn = layer + "self_attn."
        rules += [
            # BART: each stack its own position table and embedding norm
            R(f"{stack}.pos_embed.weight", hf + "embed_positions.weight"),
            R(f"{stack}.embed_norm.{{wb}}", hf + "layernorm_embedding.{wb}"),
            R(f"{stack}.layers.{{i}}.attn.qkv_proj.{{wb}}", attn + "q_proj.{wb}", attn + "k_proj.{wb}",
              attn + "v_proj.{wb}"),
            R(f"{stack}.layers.{{i}}.attn.o_proj.{{wb}}", attn + "out_proj.{wb}"),
            R(f"{stack}.layers.{{i}}.attn_norm.{{wb}}", layer + "self_attn_layer_norm.{wb}"),
            R(f"{stack}.layers.{{i}}.mlp.up_proj.{{wb}}", layer + "fc1.{wb}"),
            R(f"{stack}.layers.{{i}}.mlp.down_proj.{{wb}}", layer + "fc2.{wb}"),
            R(f"{stack}.layers.{{i}}.mlp_norm.{{wb}}", layer + "final_layer_norm.{wb}"),
        ]
    cross = "{p}decoder.layers.{i}.encoder_attn."
    rules += [
        R("decoder.layers.{i}.cross_norm.{wb}", "{p}decoder.layers.{i}.encoder_attn_layer_norm.{wb}"),
        R("decoder.layers.{i}.cross_attn.q_proj.{wb}", cross + "q_proj.{wb}"),
        R("decoder.layers.{i}.cross_attn.kv_proj.{wb}", cross + "k_proj.{wb}", cross + "v_proj.{wb}"),
        R("decoder.layers.{i}.cross_attn.o_proj.{wb}", cross + "out_proj.{wb}"),
    ]
    return Mapping(rules=tuple(rules), prefix="model.", zeros=(r"^final_logits_bias$",),
                   head_tensors=r"^(lm_head\.|final_logits_bias$)")


def _llama(arch: ArchConfig) -> Mapping:
    layer = "{p}layers.{i}."
    attn = layer + "self_attn."
    return Mapping(
        rules=(
            R("embed.weight", "{p}embed_tokens.weight" + ("|lm_head.weight" if arch.tie_embeddings else "")),
            R("decoder.layers.{i}.attn_norm.weight", layer + "input_layernorm.weight"),
            R(
                "decoder.layers.{i}.attn.qkv_proj.{wb}",
                attn + "q_proj.{wb}",
                attn + "k_proj.{wb}",
                attn + "v_proj.{wb}",
            ),
            R("decoder.layers.{i}.attn.o_proj.{wb}", attn + "o_proj.{wb}"),
            R("decoder.layers.{i}.attn.q_norm.weight", attn + "q_norm.weight"),  # Qwen3
            R("decoder.layers.{i}.attn.k_norm.weight", attn + "k_norm.weight"),
            R("decoder.layers.{i}.mlp_norm.weight", layer + "post_attention_layernorm.weight"),
            R("decoder.layers.{i}.mlp.gate_proj.{wb}", layer + "mlp.gate_proj.{wb}"),
            R("decoder.layers.{i}.mlp.up_proj.{wb}", layer + "mlp.up_proj.{wb}"),
            R("decoder.layers.{i}.mlp.down_proj.{wb}", layer + "mlp.down_proj.{wb}"),
            R("decoder.final_norm.weight", "{p}norm.weight"),
            R("lm_head.weight", "lm_head.weight"),
        ),
        prefix="model.",
        ignored=(r"\.rotary_emb\.inv_freq$",),
    )


def _gemma2(arch: ArchConfig) -> Mapping:
    """Llama's names (q_norm/k_norm: Gemma 3), but four norms a layer (sandwich):
    post_attention_layernorm is the norm on the attention's output, pre_feedforward_layernorm the
    one before the MLP (Gemma 2 and 3)."""
    llama = _llama(arch)
    layer = "{p}layers.{i}."
    rules = [r for r in llama.rules if r.target != "decoder.layers.{i}.mlp_norm.weight"]
    rules += [
        R("decoder.layers.{i}.attn_post_norm.weight", layer + "post_attention_layernorm.weight"),
        R("decoder.layers.{i}.mlp_norm.weight", layer + "pre_feedforward_layernorm.weight"),
        R("decoder.layers.{i}.mlp_post_norm.weight", layer + "post_feedforward_layernorm.weight"),
    ]
    return Mapping(rules=tuple(rules), prefix=llama.prefix,
                   ignored=(r"\.rotary_emb\.\w*inv_freq$", r"embed_tokens\.embed_scale$"))


def _phi3(arch: ArchConfig) -> Mapping:
    """Llama's names, but for two fused projections: qkv_proj is already [q | k | v], as lmspec's;
    gate_up_proj is [gate | up], each half filling one lmspec projection."""
    layer = "{p}layers.{i}."
    fused = layer + "mlp.gate_up_proj.weight"
    return Mapping(
        rules=(
            R("embed.weight", "{p}embed_tokens.weight" + ("|lm_head.weight" if arch.tie_embeddings else "")),
            R("decoder.layers.{i}.attn_norm.weight", layer + "input_layernorm.weight"),
            R("decoder.layers.{i}.attn.qkv_proj.weight", layer + "self_attn.qkv_proj.weight"),
            R("decoder.layers.{i}.attn.o_proj.weight", layer + "self_attn.o_proj.weight"),
            R("decoder.layers.{i}.mlp_norm.weight", layer + "post_attention_layernorm.weight"),
            R("decoder.layers.{i}.mlp.gate_proj.weight", fused, split=(0, 2)),
            R("decoder.layers.{i}.mlp.up_proj.weight", fused, split=(1, 2)),
            R("decoder.layers.{i}.mlp.down_proj.weight", layer + "mlp.down_proj.weight"),
            R("decoder.final_norm.weight", "{p}norm.weight"),
            R("lm_head.weight", "lm_head.weight"),
        ),
        prefix="model.",
        ignored=(r"\.rotary_emb\.inv_freq$",),
    )


def _mixtral(arch: ArchConfig) -> Mapping:
    """Llama's attention; each layer's MLP a router (`gate`) and experts whose w1 is the gate
    projection, w3 the up projection and w2 the down projection."""
    llama = _llama(arch)
    moe = "{p}layers.{i}.block_sparse_moe."
    experts = arch.decoder.layers[0].moe.experts if arch.decoder and arch.decoder.layers[0].moe else 0
    rules = [r for r in llama.rules if ".mlp." not in r.target]
    rules.append(R("decoder.layers.{i}.mlp.router.weight", moe + "gate.weight"))
    for e in range(experts):
        for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            rules.append(R(f"decoder.layers.{{i}}.mlp.experts.{e}.{ours}.weight", moe + f"experts.{e}.{theirs}.weight"))
    return Mapping(rules=tuple(rules), prefix=llama.prefix, ignored=llama.ignored)


def _gpt_neox(arch: ArchConfig) -> Mapping:
    layer = "{p}layers.{i}."
    head = "embed_out.weight|lm_head.weight"  # transformers 5 loads embed_out as lm_head, and saves it back
    return Mapping(
        rules=(
            R("embed.weight", "{p}embed_in.weight" + (f"|{head}" if arch.tie_embeddings else "")),
            R("decoder.layers.{i}.attn_norm.{wb}", layer + "input_layernorm.{wb}"),
            R("decoder.layers.{i}.attn.qkv_proj.{wb}", layer + "attention.query_key_value.{wb}", per_head=True),
            R("decoder.layers.{i}.attn.o_proj.{wb}", layer + "attention.dense.{wb}"),
            R("decoder.layers.{i}.mlp_norm.{wb}", layer + "post_attention_layernorm.{wb}"),
            R("decoder.layers.{i}.mlp.up_proj.{wb}", layer + "mlp.dense_h_to_4h.{wb}"),
            R("decoder.layers.{i}.mlp.down_proj.{wb}", layer + "mlp.dense_4h_to_h.{wb}"),
            R("decoder.final_norm.{wb}", "{p}final_layer_norm.{wb}"),
            R("lm_head.weight", head),
        ),
        prefix="gpt_neox.",
        head_tensors=r"^(embed_out|lm_head)\.",
        # the causal-mask and rotary buffers older versions of transformers saved with the weights
        ignored=(r"\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$",),
    )


def _phi(arch: ArchConfig) -> Mapping:
    layer = "{p}layers.{i}."
    attn = layer + "self_attn."
    return Mapping(
        rules=(
            R("embed.weight", "{p}embed_tokens.weight" + ("|lm_head.weight" if arch.tie_embeddings else "")),
            R("decoder.layers.{i}.attn_norm.{wb}", layer + "input_layernorm.{wb}"),
            R("decoder.layers.{i}.attn.qkv_proj.{wb}",
              attn + "q_proj.{wb}", attn + "k_proj.{wb}", attn + "v_proj.{wb}"),
            R("decoder.layers.{i}.attn.o_proj.{wb}", attn + "dense.{wb}"),
            R("decoder.layers.{i}.attn.q_norm.{wb}", attn + "q_layernorm.{wb}"),
            R("decoder.layers.{i}.attn.k_norm.{wb}", attn + "k_layernorm.{wb}"),
            R("decoder.layers.{i}.mlp.up_proj.{wb}", layer + "mlp.fc1.{wb}"),
            R("decoder.layers.{i}.mlp.down_proj.{wb}", layer + "mlp.fc2.{wb}"),
            R("decoder.final_norm.{wb}", "{p}final_layernorm.{wb}"),
            R("lm_head.{wb}", "lm_head.{wb}"),
        ),
        prefix="model.",
        ignored=(r"\.rotary_emb\.inv_freq$",),
    )


def _gptj(arch: ArchConfig) -> Mapping:
    layer = "{p}h.{i}."
    attn = layer + "attn."
    return Mapping(
        rules=(
            R("embed.weight", "{p}wte.weight" + ("|lm_head.weight" if arch.tie_embeddings else "")),
            R("decoder.layers.{i}.attn_norm.{wb}", layer + "ln_1.{wb}"),
            R("decoder.layers.{i}.attn.qkv_proj.weight", attn + "q_proj.weight", attn + "k_proj.weight",
              attn + "v_proj.weight"),
            R("decoder.layers.{i}.attn.o_proj.weight", attn + "out_proj.weight"),
            R("decoder.layers.{i}.mlp.up_proj.{wb}", layer + "mlp.fc_in.{wb}"),
            R("decoder.layers.{i}.mlp.down_proj.{wb}", layer + "mlp.fc_out.{wb}"),
            R("decoder.final_norm.{wb}", "{p}ln_f.{wb}"),
            R("lm_head.{wb}", "lm_head.{wb}"),
        ),
        prefix="transformer.",
        # the causal-mask buffers older versions of transformers saved with the weights
        ignored=(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$",),
    )


def _falcon(arch: ArchConfig) -> Mapping:
    """query_key_value fused key/value group by group, [q_0 .. q_r-1 k v] for each of kv_heads
    groups of r = heads / kv_heads query heads (the new decoder); the old decoder's layouts are
    the same rule with one query per group (multi_query=False: [q k v] per head) or one group
    (multi_query: [q | k | v]). ln_attn and ln_mlp where each branch has its own norm, else
    input_layernorm (and post_attention_layernorm, sequential)."""
    layer = "{p}h.{i}."
    first = arch.decoder.layers[0] if arch.decoder else None
    two_norms = first is not None and first.parallel and not first.shared_norm
    attn_norm, mlp_norm = ("ln_attn", "ln_mlp") if two_norms else ("input_layernorm", "post_attention_layernorm")
    return Mapping(
        rules=(
            R("embed.weight", "{p}word_embeddings.weight" + ("|lm_head.weight" if arch.tie_embeddings else "")),
            R("decoder.layers.{i}.attn_norm.{wb}", layer + attn_norm + ".{wb}"),
            R("decoder.layers.{i}.attn.qkv_proj.{wb}", layer + "self_attention.query_key_value.{wb}", per_head=True),
            R("decoder.layers.{i}.attn.o_proj.{wb}", layer + "self_attention.dense.{wb}"),
            R("decoder.layers.{i}.mlp_norm.{wb}", layer + mlp_norm + ".{wb}"),
            R("decoder.layers.{i}.mlp.up_proj.{wb}", layer + "mlp.dense_h_to_4h.{wb}"),
            R("decoder.layers.{i}.mlp.down_proj.{wb}", layer + "mlp.dense_4h_to_h.{wb}"),
            R("decoder.final_norm.{wb}", "{p}ln_f.{wb}"),
            R("lm_head.weight", "lm_head.weight"),
        ),
        prefix="transformer.",
        ignored=(r"\.rotary_emb\.inv_freq$",),
    )


def _bloom(arch: ArchConfig) -> Mapping:
    """Falcon's names (Falcon began as BLOOM's code), with the LayerNorm over the embeddings;
    query_key_value fused head by head, [q k v] per head, as GPT-NeoX."""
    falcon = _falcon(arch)
    return Mapping(
        rules=(R("embed_norm.{wb}", "{p}word_embeddings_layernorm.{wb}"), *falcon.rules),
        prefix=falcon.prefix,
    )


def _mpt(arch: ArchConfig) -> Mapping:
    """Wqkv is already [q | k | v], as lmspec's; no biases, norms included."""
    block = "{p}blocks.{i}."
    return Mapping(
        rules=(
            R("embed.weight", "{p}wte.weight" + ("|lm_head.weight" if arch.tie_embeddings else "")),
            R("decoder.layers.{i}.attn_norm.weight", block + "norm_1.weight"),
            R("decoder.layers.{i}.attn.qkv_proj.weight", block + "attn.Wqkv.weight"),
            R("decoder.layers.{i}.attn.o_proj.weight", block + "attn.out_proj.weight"),
            R("decoder.layers.{i}.mlp_norm.weight", block + "norm_2.weight"),
            R("decoder.layers.{i}.mlp.up_proj.weight", block + "ffn.up_proj.weight"),
            R("decoder.layers.{i}.mlp.down_proj.weight", block + "ffn.down_proj.weight"),
            R("decoder.final_norm.weight", "{p}norm_f.weight"),
            R("lm_head.weight", "lm_head.weight"),
        ),
        prefix="transformer.",
    )


_MAPPINGS = {"gpt2": _gpt2, "bert": _bert, "t5": _t5, "llama": _llama, "mistral": _llama, "qwen2": _llama,
             "qwen3": _llama, "gemma": _llama, "phi3": _phi3, "mixtral": _mixtral, "gpt_neox": _gpt_neox, "phi": _phi,
             "gptj": _gptj, "distilbert": _distilbert,
             "mt5": _t5, "bart": _bart, "roberta": _roberta, "opt": _opt,
             "falcon": _falcon, "bloom": _bloom, "mpt": _mpt,
             "gemma2": _gemma2, "gemma3_text": _gemma2}


def hf_mapping(model_type: str, arch: ArchConfig) -> Mapping:
    """The tensor-name mapping for a supported model type and the architecture built from it."""
    return _MAPPINGS[model_type](arch)
