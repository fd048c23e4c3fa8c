"""The experiment graph, the architecture graph, their renderers and `lmspec graph`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import networkx as nx
import pytest

from lmspec.compiler.api import check_file, check_text
from lmspec.compiler.graphs import (
    architecture_graph, experiment_graph, graph_main, stage_order, to_dot, to_mermaid,
)

SPECS = Path(__file__).resolve().parents[1] / "specs"


def spec(name: str):
    report = check_file(SPECS / name)
    assert report.ok
    return report


def where(span) -> str:
    return f"{span.line}:{span.col}"


def edges(g: nx.DiGraph) -> list[str]:
    return [f"{u} -> {v}: {d['label']}" for u, v, d in sorted(g.edges(data=True), key=lambda e: e[2]["order"])]


# ------------------------------------------------------------------------------ experiment graph


def test_the_rlaif_experiment_graph():
    g = experiment_graph(spec("rlaif.lmspec").spec)
    assert [(n, d["kind"]) for n, d in g.nodes(data=True)] == [
        ("tok", "tokenizer"), ("stories", "data"), ("reviews", "data"), ("gpt", "model"), ("pretrain", "train"),
        ("critic", "model"), ("judge_fit", "train"), ("sentiment", "judge"), ("prefs", "feedback"),
        ("reward", "train"), ("align", "rl")]
    # an edge points from a block to the block that reads it
    assert edges(g) == [
        "stories -> tok: train_on", "gpt -> pretrain: model", "stories -> pretrain: data", "tok -> pretrain: tokenizer",
        "critic -> judge_fit: model", "reviews -> judge_fit: data", "tok -> judge_fit: tokenizer",
        "critic -> sentiment: model", "judge_fit -> sentiment: from",
        "gpt -> prefs: policy", "pretrain -> prefs: from", "stories -> prefs: prompts", "sentiment -> prefs: judge",
        "gpt -> reward: model", "pretrain -> reward: init", "prefs -> reward: data", "tok -> reward: tokenizer",
        "gpt -> align: policy", "pretrain -> align: from, reference", "reward -> align: reward",
        "stories -> align: prompts", "sentiment -> align: eval_judges"]


def test_experiment_edges_carry_the_span_of_the_value_that_made_them():
    """Spans point into the file that holds the value: rlaif.lmspec imports its parts."""
    g = experiment_graph(spec("rlaif.lmspec").spec)

    def at(span) -> str:
        return f"{Path(span.file).name}:{where(span)}"

    assert at(g.edges["judge_fit", "sentiment"]["span"]) == "writer_and_critic.lmspec:29:10"  # model: critic from ...
    assert at(g.edges["pretrain", "reward"]["span"]) == "reward.lmspec:6:38"  # init: pretrain
    assert at(g.edges["sentiment", "prefs"]["span"]) == "preferences.lmspec:9:10"  # judge: sentiment
    # one stage read twice by another: both uses are kept
    assert [(label, at(span)) for label, span in g.edges["pretrain", "align"]["uses"]] == [
        ("from", "rlaif.lmspec:11:11"), ("reference", "rlaif.lmspec:12:14")]
    # the spec's only tokenizer is read by stages that name none: an implicit edge at the stage's name
    tok = g.edges["tok", "pretrain"]
    assert tok["implicit"] and at(tok["span"]) == "writer_and_critic.lmspec:13:7"
    assert at(g.nodes["sentiment"]["span"]) == "writer_and_critic.lmspec:28:7"


def test_a_bpe_tokenizer_reads_the_data_it_is_trained_on():
    report = check_text(textwrap.dedent("""\
        lmspec 1
        tokenizer tok { kind: bpe(vocab: 512, train_on: text) }
        data text { source: builtin("tiny-stories") }
        model gpt { vocab: 512, context: 64, layers: 1, d_model: 32, heads: 2 }
        train pretrain { model: gpt, tokenizer: tok, objective: clm, data: text }
    """))
    g = experiment_graph(report.spec)
    assert edges(g) == ["text -> tok: train_on", "gpt -> pretrain: model", "text -> pretrain: data",
                        "tok -> pretrain: tokenizer"]
    assert where(g.edges["text", "tok"]["span"]) == "2:49"
    assert not g.edges["tok", "pretrain"]["implicit"]


def test_stage_order_runs_every_stage_after_what_it_reads():
    assert stage_order(experiment_graph(spec("rlaif.lmspec").spec)) == [
        "pretrain", "judge_fit", "prefs", "reward", "align"]
    assert stage_order(experiment_graph(spec("bert_t5.lmspec").spec)) == ["bert_pretrain", "t5_pretrain"]
    # other kinds on request
    assert stage_order(experiment_graph(spec("rlaif.lmspec").spec), kinds=("judge", "train")) == [
        "pretrain", "judge_fit", "sentiment", "reward"]


def test_stage_order_ties_keep_the_order_of_the_spec():
    report = check_text(textwrap.dedent("""\
        lmspec 1
        tokenizer tok { kind: bytes }
        data text { source: builtin("tiny-stories") }
        model gpt { vocab: 262, context: 64, layers: 1, d_model: 32, heads: 2 }
        train c { model: gpt from a, objective: clm, data: text }
        train b { model: gpt, objective: clm, data: text }
        train a { model: gpt, objective: clm, data: text }
    """))
    assert stage_order(experiment_graph(report.spec)) == ["b", "a", "c"]


def test_stage_order_refuses_a_cycle_and_names_it():
    report = check_text(textwrap.dedent("""\
        lmspec 1
        tokenizer tok { kind: bytes }
        data text { source: builtin("tiny-stories") }
        model gpt { vocab: 262, context: 64, layers: 1, d_model: 32, heads: 2 }
        train a { model: gpt, init: b, objective: clm, data: text }
        train b { model: gpt from a, objective: clm, data: text }
    """))
    assert [d.code for d in report.errors] == ["LMS079"]
    with pytest.raises(ValueError, match=r"stages depend on each other in a cycle: a -> b -> a"):
        stage_order(experiment_graph(report.spec))


# ------------------------------------------------------------------------------ architecture graph


def test_the_gpt_architecture_graph_follows_the_data():
    report = spec("gpt.lmspec")
    g = architecture_graph(report.models["gpt"], report.spec)
    assert nx.is_directed_acyclic_graph(g)
    # no learned positions: rope is a note, and acts inside every attention
    assert g.nodes["positions"]["kind"] == "note"
    # pre-norm: norm, then the sublayer; the residual skips the norm and joins at the sublayer
    assert edges(g)[:6] == [
        "input_ids -> token_embedding: (B, T)",
        "token_embedding -> decoder.0.attn_norm: (B, T, 256)",
        "decoder.0.attn_norm -> decoder.0.attn: (B, T, 256)",
        "token_embedding -> decoder.0.attn: (B, T, 256)",
        "decoder.0.attn -> decoder.0.mlp_norm: (B, T, 256)",
        "decoder.0.mlp_norm -> decoder.0.mlp: (B, T, 256)"]
    assert g.edges["token_embedding", "decoder.0.attn"]["residual"]
    assert edges(g)[-4:] == [
        "decoder.5.mlp -> decoder.final_norm: (B, T, 256)",
        "decoder.final_norm -> lm_head: (B, T, 256)",
        "token_embedding -> lm_head: tied",
        "lm_head -> logits: (B, T, 262)"]
    assert len([n for n, d in g.nodes(data=True) if d["kind"] == "attention"]) == 6


def test_attention_nodes_carry_their_shape_and_the_span_that_set_them():
    report = spec("gpt.lmspec")
    g = architecture_graph(report.models["gpt"], report.spec)
    layer0, layer2 = g.nodes["decoder.0.attn"], g.nodes["decoder.2.attn"]
    assert {k: layer0[k] for k in ("heads", "kv_heads", "head_dim", "attention", "window", "position")} == {
        "heads": 8, "kv_heads": 2, "head_dim": 32, "attention": "sliding", "window": 64, "position": "rope"}
    assert where(layer0["span"]) == "23:27"  # layer 0..1 { attention: sliding(window: 64) }
    assert (layer2["attention"], layer2["window"], where(layer2["span"])) == ("causal", None, "16:14")
    mlp = g.nodes["decoder.0.mlp"]
    assert (mlp["d_ff"], mlp["activation"], mlp["gated"], where(mlp["span"])) == (1024, "swiglu", True, "15:9")
    assert where(g.nodes["token_embedding"]["span"]) == "9:10"


def test_a_post_norm_encoder_with_segments_a_pooler_and_two_heads():
    report = spec("bert_t5.lmspec")
    g = architecture_graph(report.models["bert"], report.spec)
    got = edges(g)
    # post-norm: the sublayer first, then the norm over the residual sum
    assert "embed_norm -> encoder.0.attn: (B, T, 128)" in got
    assert "encoder.0.attn -> encoder.0.attn_norm: (B, T, 128)" in got
    assert g.edges["embed_norm", "encoder.0.attn_norm"]["residual"]
    assert "segment_ids -> segment_embedding: (B, T)" in got
    assert "segment_embedding -> embeddings: (B, T, 128)" in got
    assert "encoder.1.mlp_norm -> pooler: (B, T, 128)" in got  # post-norm: no final norm
    assert "pooler -> nsp_head: (B, 128)" in got
    assert "mlm_head -> logits: (B, T, 294)" in got
    assert "nsp_head -> nsp_logits: (B, 2)" in got


def test_an_encoder_decoder_feeds_the_encoder_output_to_every_cross_attention():
    report = spec("bert_t5.lmspec")
    g = architecture_graph(report.models["t5"], report.spec)
    assert nx.is_directed_acyclic_graph(g)
    got = edges(g)
    assert "input_ids -> token_embedding: (B, S)" in got
    assert "decoder_input_ids -> token_embedding: (B, T)" in got
    assert [e for e in got if e.startswith("encoder.final_norm ->")] == [
        "encoder.final_norm -> decoder.0.cross_attn: (B, S, 128)",
        "encoder.final_norm -> decoder.1.cross_attn: (B, S, 128)"]
    # one T5 bias table per stack, read by each of its layers
    assert [e for e in got if e.startswith("decoder.relative_bias")] == [
        "decoder.relative_bias -> decoder.0.attn: (1, 4, T, T)",
        "decoder.relative_bias -> decoder.1.attn: (1, 4, T, T)"]
    assert "decoder.0.attn -> decoder.0.cross_norm: (B, T, 128)" in got


def test_classifier_and_scalar_heads_pool_as_their_config_says():
    report = check_text(textwrap.dedent("""\
        lmspec 1
        model m { vocab: 300, context: 16, layers: 1, d_model: 16, heads: 2,
                  head: [classifier(classes: 3, pool: mean), scalar] }
    """))
    g = architecture_graph(report.models["m"], report.spec)
    assert edges(g)[-4:] == [
        "decoder.final_norm -> classifier_head: (B, T, 16) -> mean",
        "classifier_head -> class_logits: (B, 3)",
        "decoder.final_norm -> scalar_head: (B, T, 16) -> last token",
        "scalar_head -> scores: (B)"]


def test_without_the_spec_an_architecture_graph_has_no_spans():
    arch = spec("gpt.lmspec").models["gpt"]
    g = architecture_graph(arch)
    assert all(d["span"] is None for _, d in g.nodes(data=True))
    assert edges(g) == edges(architecture_graph(arch, spec("gpt.lmspec").spec))


# ------------------------------------------------------------------------------ rendering


SMALL = textwrap.dedent("""\
    lmspec 1
    tokenizer tok { kind: bpe(vocab: 512, train_on: text) }
    data text { source: builtin("tiny-stories") }
    model gpt { vocab: 512, context: 64, layers: 1, d_model: 32, heads: 2 }
    train pretrain { model: gpt, objective: clm, data: text }
""")


def test_the_experiment_graph_as_dot():
    g = experiment_graph(check_text(SMALL, "small.lmspec").spec)
    assert to_dot(g) == textwrap.dedent("""\
        digraph "small.lmspec" {
          rankdir=TB;
          node [fontname="Helvetica", fontsize=10];
          edge [fontname="Helvetica", fontsize=9];
          "tok" [label="tokenizer tok\\nbpe 512", shape=hexagon];
          "text" [label="data text\\nbuiltin tiny-stories", shape=cylinder];
          "gpt" [label="model gpt\\ndecoder, 1 layer, d_model 32", shape=box3d];
          "pretrain" [label="train pretrain\\nclm, 1000 steps", shape=box, style="rounded"];
          "text" -> "tok" [label="train_on"];
          "gpt" -> "pretrain" [label="model"];
          "text" -> "pretrain" [label="data"];
          "tok" -> "pretrain" [label="tokenizer", style=dashed];
        }
    """)


def test_the_experiment_graph_as_mermaid():
    g = experiment_graph(check_text(SMALL, "small.lmspec").spec)
    assert to_mermaid(g) == textwrap.dedent("""\
        flowchart TD
          tok{{"tokenizer tok<br/>bpe 512"}}
          text[("data text<br/>builtin tiny-stories")]
          gpt[["model gpt<br/>decoder, 1 layer, d_model 32"]]
          pretrain(["train pretrain<br/>clm, 1000 steps"])
          text -->|"train_on"| tok
          gpt -->|"model"| pretrain
          text -->|"data"| pretrain
          tok -.->|"tokenizer"| pretrain
    """)


def test_rendering_is_deterministic():
    for name in ("gpt.lmspec", "bert_t5.lmspec", "rlaif.lmspec"):
        report = spec(name)
        assert to_dot(experiment_graph(report.spec)) == to_dot(experiment_graph(spec(name).spec))
        for arch in report.models.values():
            text = to_dot(architecture_graph(arch, report.spec))
            assert text == to_dot(architecture_graph(arch, report.spec))
            assert text.count("{") == text.count("}")  # balanced: every cluster closed
            mermaid = to_mermaid(architecture_graph(arch, report.spec))
            assert mermaid.count("subgraph") == mermaid.count("\n  end")


def test_renderers_escape_labels_and_avoid_reserved_mermaid_ids():
    g = nx.DiGraph(name="x")
    g.add_node("end", kind="model", label='say "hi"\nnow')
    g.add_node("a.b", kind="data", label="a.b")
    g.add_node("a_b", kind="data", label="a_b")
    g.add_edge("a.b", "end", label="data", order=0)
    g.add_edge("a_b", "end", label="", order=1)
    assert '"end" [label="say \\"hi\\"\\nnow", shape=box3d];' in to_dot(g)
    assert to_mermaid(g).splitlines() == [
        "flowchart TD",
        '  n_end[["say #quot;hi#quot;<br/>now"]]',
        '  a_b[("a.b")]',
        '  a_b_2[("a_b")]',
        '  a_b -->|"data"| n_end',
        "  a_b_2 --> n_end"]


# ------------------------------------------------------------------------------ lmspec graph


def test_graph_command_prints_the_experiment_graph(capsys):
    assert graph_main([str(SPECS / "rlaif.lmspec")]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "rlaif.lmspec" {')
    assert '"pretrain" -> "align" [label="from, reference"];' in out


def test_graph_command_prints_a_model_in_mermaid(capsys):
    assert graph_main([str(SPECS / "bert_t5.lmspec"), "--model", "t5", "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD\n")
    assert 'encoder_final_norm -->|"(B, S, 128)"| decoder_0_cross_attn' in out


def test_graph_command_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.lmspec"
    bad.write_text("lmspec 1\nmodel m { vocab: 262, context: 64, layers: 2, d_model: 100, heads: 8 }\n")
    assert graph_main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.lmspec:2:56: error[LMS060]: heads (8) must divide d_model (100)" in err
    assert graph_main([str(tmp_path / "missing.lmspec")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert graph_main([str(SPECS / "gpt.lmspec"), "--model", "gtp"]) == 2
    err = capsys.readouterr().err
    assert "no model named 'gtp'" in err and "did you mean 'gpt'?" in err
    assert graph_main([str(SPECS / "gpt.lmspec"), "--format", "svg"]) == 2
    assert graph_main([]) == 2


def test_graph_command_prints_warnings_and_still_draws(tmp_path, capsys):
    path = tmp_path / "w.lmspec"
    path.write_text("lmspec 1\nmodel m { vocab: 50_257, context: 64, layers: 1, d_model: 32, heads: 2 }\n")
    assert graph_main([str(path), "--model", "m"]) == 0
    captured = capsys.readouterr()
    assert "warning[LMS081]" in captured.err
    assert captured.out.startswith('digraph "m" {')


# ------------------------------------------------------------------- FlowGraph against networkx


def _random_graphs(count: int = 300):
    """Seeded random digraphs of 1-9 nodes, self-loops and cycles included, each as a
    FlowGraph and as a networkx DiGraph with the same nodes and edges."""
    import random

    from lmspec.compiler.graphs import FlowGraph

    rng = random.Random(0)
    for _ in range(count):
        n = rng.randint(1, 9)
        names = rng.sample("abcdefghijk", n)
        edges = [(u, v) for u in names for v in names if rng.random() < 0.18]
        flow, ref = FlowGraph(), nx.DiGraph()
        for i, name in enumerate(names):
            flow.add_node(name, index=i, kind="train")
            ref.add_node(name, index=i, kind="train")
        for u, v in edges:
            flow.add_edge(u, v, label="x", span=None)
            ref.add_edge(u, v, label="x", span=None)
        yield flow, ref


def test_flow_graph_algorithms_agree_with_networkx():
    from lmspec.compiler.graphs import _components, ancestors, stage_cycles

    acyclic = cyclic = 0
    for flow, ref in _random_graphs():
        assert sorted(map(sorted, _components(flow))) == sorted(map(sorted, nx.strongly_connected_components(ref)))
        for n in ref:
            assert ancestors(flow, n) == nx.ancestors(ref, n)
        assert [d.message for d in stage_cycles(flow)] == [d.message for d in stage_cycles(ref)]
        if nx.is_directed_acyclic_graph(ref):
            acyclic += 1
            expected = list(nx.lexicographical_topological_sort(ref, key=lambda n: ref.nodes[n]["index"]))
            assert stage_order(flow) == expected == stage_order(ref)
            assert not stage_cycles(flow)
        else:
            cyclic += 1
            assert stage_cycles(flow)
            with pytest.raises(ValueError, match="cycle"):
                stage_order(flow)
        back = flow.to_networkx()
        assert sorted(back.edges) == sorted(ref.edges) and dict(back.nodes(data=True)) == dict(ref.nodes(data=True))
    assert acyclic > 50 and cyclic > 50  # both kinds were tried


def test_check_imports_neither_networkx_nor_torch():
    """`lmspec check --no-meta` is run on every save: it must not pay for networkx or torch."""
    import subprocess
    import sys

    code = ("import sys; from lmspec.cli import main\n"
            "try: main(['check', '--no-meta', 'specs/rlaif.lmspec'])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('networkx', 'torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=SPECS.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_parallel_layer_feeds_attention_and_mlp_from_one_input():
    """`residual: parallel(norms: 1)` (GPT-J, Phi-2): one norm feeds both branches, whose outputs
    join the residual in one add; with norms: 2 each branch has its own norm."""
    for norms, expected_norms in ((1, 1), (2, 2)):
        text = f"""lmspec 1
model m {{ arch: decoder, vocab: 300, context: 32, layers: 2, d_model: 32, heads: 4,
          position: rope(theta: 10_000, fraction: 50%), residual: parallel(norms: {norms}), qk_norm: true }}
"""
        report = check_text(text, "p.lmspec")
        assert report.ok, [d.message for d in report.diagnostics]
        g = architecture_graph(report.models["m"], report.spec)
        layer = [n for n in g if n.startswith("decoder.0.")]
        assert len([n for n in layer if g.nodes[n]["kind"] == "norm"]) == expected_norms
        (layer_input,) = g.predecessors("decoder.0.attn_norm")
        assert set(g.predecessors("decoder.0.add")) == {"decoder.0.attn", "decoder.0.mlp", layer_input}
        assert g.edges[layer_input, "decoder.0.add"]["residual"]
        assert "decoder.0.add" in set(g.predecessors("decoder.1.attn_norm"))
        label = g.nodes["decoder.0.attn"]["label"]
        assert "fraction: 50%" in label and "qk-norm" in label
