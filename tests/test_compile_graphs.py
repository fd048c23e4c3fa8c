"""`compile: true` runs the model through torch.compile; a graph break splits the compiled
graph and falls back to Python in the middle of every step. Counted on the CPU with
`torch._dynamo.explain` (tracing only, nothing is compiled): one graph and no break for the
forward pass of each kind of model."""

from __future__ import annotations

import pytest
import torch

from lmspec.compiler.api import check_text
from lmspec.compiler.build import build_model

MODELS = {
    "gpt2": "arch: decoder, position: learned, norm: layernorm, activation: gelu_tanh, tie_embeddings: true",
    "llama": "arch: decoder, position: rope(theta: 10_000), norm: rmsnorm, activation: swiglu, bias: false, "
             "kv_heads: 2",
    "sliding": "arch: decoder, position: rope(theta: 10_000), norm: rmsnorm, activation: swiglu, "
               "attention: sliding(window: 8)",
    "alibi": "arch: decoder, position: alibi, norm: layernorm",
    "bert": "arch: encoder, position: learned, placement: post, head: mlm, segments: 2",
    "t5": "arch: encoder_decoder, encoder { layers: 2 }, decoder { layers: 2 }, position: relative(buckets: 8, max_distance: 16), norm: rmsnorm, bias: false, "
          "activation: relu",
}


def _model(kind: str) -> torch.nn.Module:
    layers = "" if kind == "t5" else "layers: 2, "
    text = f"lmspec 1\nmodel m {{ vocab: 300, context: 32, {layers}d_model: 32, heads: 4, {MODELS[kind]} }}\n"
    report = check_text(text, f"{kind}.lmspec")
    assert report.ok, [d.message for d in report.diagnostics]
    torch.manual_seed(0)
    return build_model(report.models["m"], device=torch.device("cpu"))


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_forward_pass_compiles_to_one_graph(kind):
    import torch._dynamo as dynamo

    model = _model(kind).train()
    ids = torch.randint(0, 300, (2, 16))
    dynamo.reset()
    if kind == "t5":
        explained = dynamo.explain(model)(ids, decoder_input_ids=ids[:, :8])
    else:
        explained = dynamo.explain(model)(ids)
    reasons = [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1
