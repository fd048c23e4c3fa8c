"""The two graphs of a spec (networkx), their renderers, and `lmspec graph`.

The *experiment graph* has a node per block and an edge from each block to every
block that reads it: data -> tokenizer (`bpe(train_on: ...)`), data / tokenizer /
model -> train stage, stage -> stage (`from`, `init:`, `reference:`, `reward:`),
judge -> feedback -> train (preference data) -> rl... Edges point the way
artifacts flow, so a topological order is an order the runtime can execute in,
and a cycle is a design error (`LMS079`) named at the value that closes it.

The *architecture graph* of one model has a node per module in the order data
moves through it -- embeddings, each layer's norms, attention and MLP (in pre- or
post-norm order, with residual edges), final norms, pooler and heads -- and each
edge carries the tensor shape that travels along it, e.g. "(B, T, 256)".

Every node carries `span`: the source of the block, layer override or key that
made it, so a check made on a graph still points at the spec.

`check` reads the experiment graph as a `FlowGraph`, a few dicts with the part of
networkx's `DiGraph` interface the rules use: importing networkx costs a fresh `lmspec
check` more time than all its rules (~85 ms of ~0.4 s), and a spec's graph has tens of
nodes. `experiment_graph` (the API, the renderers) still returns a `networkx.DiGraph`;
`stage_cycles` and `stage_order` take either.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import networkx as nx

from lmspec.compiler.arch import GATED_ACTIVATIONS, ArchConfig, LayerConfig, StackConfig
from lmspec.compiler.resolve import ResolvedBlock
from lmspec.diagnostics import CODES, Diagnostic, Label, Span

__all__ = [
    "architecture_graph",
    "experiment_graph",
    "flow_graph",
    "FlowGraph",
    "ancestors",
    "stage_cycles",
    "stage_order",
    "STAGE_KINDS",
    "ModelSpans",
    "to_dot",
    "to_mermaid",
    "graph_main",
]

CODES.update({
    "LMS079": "stages depend on each other in a cycle",
})

#: the blocks the runtime executes, in `stage_order`
STAGE_KINDS = ("train", "feedback", "rl")


# ============================================================================ experiment graph


class _NodeView(dict):
    """node -> attributes; `view(data=True)` yields (node, attributes) as networkx's does."""

    def __call__(self, data: bool = False):
        return iter(self.items()) if data else iter(self)


class FlowGraph:
    """A small directed graph with the part of `networkx.DiGraph`'s interface that the check
    uses: `nodes[n]`, `edges[src, dst]`, `has_edge`, `successors`, `predecessors`,
    `out_degree`, `in_degree`, iteration and `in`, `graph` (attributes of the graph).
    Nodes and edges keep the order they were added in."""

    def __init__(self, **attrs):
        self.graph: dict = dict(attrs)
        self.nodes = _NodeView()
        self.edges: dict[tuple, dict] = {}
        self._succ: dict[Any, dict] = {}
        self._pred: dict[Any, dict] = {}

    def add_node(self, n, **attrs) -> None:
        self.nodes.setdefault(n, {}).update(attrs)
        self._succ.setdefault(n, {})
        self._pred.setdefault(n, {})

    def add_edge(self, src, dst, **attrs) -> None:
        for n in (src, dst):
            if n not in self.nodes:
                self.add_node(n)
        data = self.edges.setdefault((src, dst), {})
        data.update(attrs)
        self._succ[src][dst] = data
        self._pred[dst][src] = data

    def has_edge(self, src, dst) -> bool:
        return (src, dst) in self.edges

    def successors(self, n):
        return iter(self._succ[n])

    def predecessors(self, n):
        return iter(self._pred[n])

    def out_degree(self, n) -> int:
        return len(self._succ[n])

    def in_degree(self, n) -> int:
        return len(self._pred[n])

    def __iter__(self):
        return iter(self.nodes)

    def __contains__(self, n) -> bool:
        return n in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def to_networkx(self) -> "nx.DiGraph":
        import networkx as nx

        g = nx.DiGraph(**self.graph)
        g.add_nodes_from(self.nodes.items())
        g.add_edges_from((src, dst, data) for (src, dst), data in self.edges.items())
        return g



def _link(g: FlowGraph, src: Any, dst: str, label: str, span: Span | None, *, implicit: bool = False) -> None:
    """An edge src -> dst ("dst reads src"). Two uses of one block by another (a stage both
    `from` and `reference:`) share the edge: `label` joins them, `uses` keeps each."""
    if not isinstance(src, str) or src not in g or dst not in g:
        return  # a reference the schema already reported
    use = (label, span)
    if g.has_edge(src, dst):
        data = g.edges[src, dst]
        data["uses"].append(use)
        data["label"] = ", ".join(lbl for lbl, _ in data["uses"])
        data["implicit"] = data["implicit"] and implicit
    else:
        # a running count: g.number_of_edges() walks every node, quadratic over a large spec
        order = g.graph["edges_added"] = g.graph.get("edges_added", 0) + 1
        g.add_edge(src, dst, label=label, span=span, uses=[use], implicit=implicit, order=order)


def _objective_text(terms) -> str:
    parts = []
    for t in terms:
        w = t.weight
        parts.append(t.objective.kind if w == 1 else f"{w:g} * {t.objective.kind}")
    return " + ".join(parts).replace("+ -", "- ")


def _detail(kind: str, spec) -> str:
    if spec is None:
        return ""
    if kind == "tokenizer":
        k = spec.kind
        return {"bytes": "bytes", "bpe": f"bpe {getattr(k, 'vocab', '')}", "hf": "hf"}.get(k.kind, k.kind)
    if kind == "data":
        src = spec.source
        return f"{src.kind} {getattr(src, 'name', None) or getattr(src, 'path', '')}".strip()
    if kind == "model":
        layers = spec.layers if spec.layers is not None else "?"
        if spec.arch == "encoder_decoder":
            enc = spec.encoder.layers if spec.encoder else layers
            dec = spec.decoder.layers if spec.decoder else layers
            layers = f"{enc}+{dec}"
        return f"{spec.arch}, {layers} layer{'s' * (layers != 1)}, d_model {spec.d_model}"
    if kind == "train":
        return f"{_objective_text(spec.objective)}, {spec.steps} steps"
    if kind == "judge":
        if getattr(spec.model, "kind", None) in ("hf", "openai"):  # an LM labeller: its task, not a score
            return f"{spec.model.kind} {spec.task}"
        score = spec.score
        if hasattr(score, "terms"):  # a weighted sum of judges and rules
            return "sum of " + ", ".join(t.judge if isinstance(t.judge, str) else t.judge.kind for t in score.terms)
        return score.kind + (f"(class {score.cls})" if hasattr(score, "cls") else "")
    if kind == "feedback":
        return f"{spec.samples} samples per prompt"
    if kind == "rl":
        return f"{spec.algorithm.kind}, {spec.steps} steps"
    return ""


def experiment_graph(validated) -> nx.DiGraph:
    """The experiment graph of a validated spec (`compiler.schema_check.ValidatedSpec`), a
    `networkx.DiGraph`: `flow_graph(validated).to_networkx()`.

    Nodes are block names with attributes kind, name, span (the block's name), index
    (order in the spec), detail (a short summary) and label. Edges src -> dst mean "dst
    reads src", with attributes label ("model", "from", "init", "data", "tokenizer",
    "train_on", "policy", "prompts", "judge", "reference", "reward", "score": a judge that
    a weighted sum of judges adds), span (the value that
    made the edge), uses (every (label, span) when one block reads another twice) and
    implicit (the only tokenizer of a spec, used by a stage that names none).
    Blocks that failed the schema are nodes without outgoing reads."""
    return flow_graph(validated).to_networkx()


def flow_graph(validated) -> FlowGraph:
    """The experiment graph of `experiment_graph` as a `FlowGraph`, without networkx."""
    resolved = validated.resolved
    g = FlowGraph(kind="experiment", name=Path(resolved.root).name)
    for i, (name, block) in enumerate(resolved.blocks.items()):
        spec = validated.blocks.get(name)
        detail = _detail(block.kind, spec)
        g.add_node(name, kind=block.kind, name=name, span=block.name_span, index=i, detail=detail,
                   label=f"{block.kind} {name}" + (f"\n{detail}" if detail else ""))
    tokenizers = [n for n, b in resolved.blocks.items() if b.kind == "tokenizer"]

    for name, spec in validated.blocks.items():
        block = resolved.blocks[name]
        kind = block.kind
        at = block.span_of

        def use_model(use, key: str, label: str) -> None:
            _link(g, use.model, name, label, at((key,)))
            if use.stage is not None:
                _link(g, use.stage, name, "from", at((key,)))

        if kind == "tokenizer":
            train_on = getattr(spec.kind, "train_on", None)
            _link(g, train_on, name, "train_on", at(("kind", "train_on")))
        elif kind == "train":
            use_model(spec.model, "model", "model")
            if isinstance(spec.init, str):
                _link(g, spec.init, name, "init", at(("init",)))
            _link(g, spec.data, name, "data", at(("data",)))
            if spec.tokenizer is not None:
                _link(g, spec.tokenizer, name, "tokenizer", at(("tokenizer",)))
            elif len(tokenizers) == 1:
                _link(g, tokenizers[0], name, "tokenizer", block.name_span, implicit=True)
        elif kind == "judge":
            if hasattr(spec.model, "stage"):  # `critic from STAGE`; hf(...), openai(...) and rules read no block
                use_model(spec.model, "model", "model")
            for term in getattr(spec.score, "terms", ()):  # a weighted sum reads the judges it adds
                _link(g, term.judge, name, "score", at(("score",)))
        elif kind == "feedback":
            use_model(spec.policy, "policy", "policy")
            _link(g, spec.prompts.data, name, "prompts", at(("prompts",)))
            _link(g, spec.judge, name, "judge", at(("judge",)))
        elif kind == "rl":
            use_model(spec.policy, "policy", "policy")
            if spec.reference is not None:
                _link(g, spec.reference, name, "reference", at(("reference",)))
            _link(g, spec.reward, name, "reward", at(("reward",)))
            _link(g, spec.rollouts.prompts.data, name, "prompts", at(("rollouts", "prompts")))
            for i, judge in enumerate(spec.eval_judges):
                _link(g, judge, name, "eval_judges", at(("eval_judges", i)))
    return g


def _components(g) -> list[set]:
    """The strongly connected components of `g` (Tarjan's algorithm, without recursion)."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    out: list[set] = []
    for root in g:
        if root in index:
            continue
        work = [(root, iter(g.successors(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            n, succs = work[-1]
            for m in succs:
                if m not in index:
                    index[m] = low[m] = len(index)
                    stack.append(m)
                    on_stack.add(m)
                    work.append((m, iter(g.successors(m))))
                    break
                if m in on_stack:
                    low[n] = min(low[n], index[m])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[n])
                if low[n] == index[n]:
                    component = set()
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.add(m)
                        if m == n:
                            break
                    out.append(component)
    return out


def _shortest_path(g, component: set, src, dst) -> list:
    """A shortest path src -> dst inside `component` (breadth first; ties: spec order)."""
    before = {src: None}
    frontier = [src]
    while frontier and dst not in before:
        nxt = []
        for n in frontier:
            for m in sorted(g.successors(n), key=lambda k: g.nodes[k]["index"]):
                if m in component and m not in before:
                    before[m] = n
                    nxt.append(m)
        frontier = nxt
    path = [dst]
    while path[-1] != src:
        path.append(before[path[-1]])
    return path[::-1]


def _cycle_from(g, component: set[str]) -> list[str]:
    """One cycle inside a strongly connected component, starting at its first block in the
    spec and walking towards the nodes it feeds: [a, b, ..., a]."""
    order = sorted(component, key=lambda n: g.nodes[n]["index"])
    start = order[0]
    if g.has_edge(start, start):
        return [start, start]
    # shortest path back to `start` through the component: a simple cycle, deterministic
    best = None
    for succ in sorted((m for m in g.successors(start) if m in component), key=lambda n: g.nodes[n]["index"]):
        path = _shortest_path(g, component, succ, start)
        if best is None or len(path) < len(best):
            best = path
    return [start] + best


def stage_cycles(g: FlowGraph | nx.DiGraph) -> list[Diagnostic]:
    """LMS079 for every group of blocks that depend on each other in a cycle.

    The message names the cycle in the direction artifacts flow ("a -> b -> a": a feeds b
    feeds a); the primary span is the value that makes the first block read the last one,
    and a label marks each other link."""
    out = []
    components = [c for c in _components(g) if len(c) > 1 or any(g.has_edge(n, n) for n in c)]
    for component in sorted(components, key=lambda c: min(g.nodes[n]["index"] for n in c)):
        cycle = _cycle_from(g, component)
        links = list(zip(cycle, cycle[1:]))  # (src, dst): dst reads src
        closing = links[-1]
        data = g.edges[closing]
        notes = [f"'{dst}' reads '{src}' ({g.edges[src, dst]['label']})" for src, dst in links]
        labels = [Label(g.edges[s, d]["span"], f"'{d}' reads '{s}' here") for s, d in links[:-1]
                  if g.edges[s, d]["span"] is not None]
        out.append(Diagnostic(
            "error", "LMS079", f"stages depend on each other in a cycle: {' -> '.join(cycle)}", data["span"],
            labels=labels, notes=notes,
            help="a stage can only start from stages that finish before it; remove one of these links"))
    return out


def ancestors(g: FlowGraph | nx.DiGraph, n) -> set:
    """Every block `n` reads, directly or through others (as `networkx.ancestors`)."""
    seen: set = set()
    todo = [n]
    while todo:
        for m in g.predecessors(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    seen.discard(n)
    return seen


def stage_order(g: FlowGraph | nx.DiGraph, kinds: Iterable[str] = STAGE_KINDS) -> list[str]:
    """The blocks of `kinds` (default: train, feedback, rl) in an order that respects every
    dependency; ties keep the order of the spec. Raises ValueError naming a cycle."""
    kinds = tuple(kinds)
    # Kahn's algorithm, the ready block that comes first in the spec taken first
    waiting = {n: sum(1 for m in g.predecessors(n) if m != n) + g.has_edge(n, n) for n in g}
    ready = [(g.nodes[n]["index"], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for m in g.successors(n):
            if m != n:
                waiting[m] -= 1
                if waiting[m] == 0:
                    heapq.heappush(ready, (g.nodes[m]["index"], m))
    if len(order) < len(waiting):
        cycles = stage_cycles(g)
        raise ValueError(cycles[0].message if cycles else "the experiment graph has a cycle")
    return [n for n in order if g.nodes[n]["kind"] in kinds]


# ============================================================================ architecture graph


def _shape(*dims: Any) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


class ModelSpans:
    """Which part of a model block set something: a layer override, a stack block
    (`encoder { }` / `decoder { }`), a model key; None everywhere without a block."""

    def __init__(self, block: ResolvedBlock | None):
        self.block = block

    def has(self, key: str) -> bool:
        """Whether the model block writes `key` itself (not a default)."""
        return self.block is not None and key in self.block.fields

    def model(self, *keys: str) -> Span | None:
        """The span of the first of `keys` the block writes; the block's name if none."""
        b = self.block
        if b is None:
            return None
        for key in keys:
            if key in b.fields:
                return b.span_of((key,))
        return b.name_span

    def layer(self, stack: str, i: int, *keys: str) -> Span | None:
        """The span of the last override covering layer `i` that sets one of `keys`, else of
        the stack block's key, else of the model's key, else of the stack or model name."""
        b = self.block
        if b is None:
            return None
        sub = b.nested.get(stack)  # only an encoder-decoder has stack blocks
        prefix = (stack,) if sub is not None else ()
        overrides = sub.layers if sub is not None else b.layers
        for j in range(len(overrides) - 1, -1, -1):
            lo = overrides[j]
            if lo.covers(i):
                for key in keys:
                    if key in lo.fields:
                        return b.span_of(prefix + ("layer", j, key))
        return self.stack(stack, *keys)

    def stack(self, stack: str, *keys: str) -> Span | None:
        """What a stack as a whole reads, not one of its layers (BART's own position table and
        embedding norm): the span of the stack block's key, else of the model's key, else of the
        stack or model name."""
        b = self.block
        if b is None:
            return None
        sub = b.nested.get(stack)  # only an encoder-decoder has stack blocks
        if sub is not None:
            for key in keys:
                if key in sub.fields:
                    return b.span_of((stack, key))
        for key in keys:
            if key in b.fields:
                return b.span_of((key,))
        return sub.name_span if sub is not None else b.name_span


def _position_text(layer_or_arch) -> str:
    p = layer_or_arch.position
    if p.kind == "rope":
        args = [f"theta: {p.theta:g}"]
        if getattr(p, "fraction", 1.0) != 1.0:
            args.append(f"fraction: {p.fraction:.0%}")
        if getattr(p, "layout", "half") != "half":
            args.append(f"layout: {p.layout}")
        scaling = getattr(p, "scaling", None)
        if scaling is not None:
            args.append(f"scaling: {scaling.kind}(factor: {scaling.factor:g})")
        return f"rope({', '.join(args)})"
    if p.kind == "relative":
        return f"relative(buckets: {p.buckets}, max_distance: {p.max_distance})"
    return p.kind


def _attention_text(layer: LayerConfig) -> str:
    a = layer.attention
    kind = f"sliding({a.window})" if a.kind == "sliding" else a.kind
    if layer.kv_heads == layer.heads:
        heads = f"{layer.heads} heads"
    elif layer.kv_heads == 1:
        heads = f"{layer.heads} heads, multi-query"
    else:
        heads = f"{layer.heads} heads, {layer.kv_heads} kv"
    pos = f", {_position_text(layer)}" if layer.position.kind in ("rope", "alibi", "relative") else ""
    qk = ", qk-norm" if getattr(layer, "qk_norm", False) else ""
    return f"{kind} attention\n{heads} x {layer.head_dim}{pos}{qk}"


def architecture_graph(arch: ArchConfig, validated=None) -> nx.DiGraph:
    """The module graph of one lowered model.

    Nodes (ids such as "decoder.3.attn") carry kind (input, embedding, add, norm,
    attention, cross_attention, mlp, pooler, head, output, note), label, group (embeddings,
    encoder, decoder, heads) and span; attention nodes also heads, kv_heads, head_dim,
    kind of attention (`attention`), window and position; MLP nodes d_ff and activation.
    Edges carry `shape`, e.g. "(B, T, 256)", and `residual=True` on skip connections.
    `validated` (the spec the model came from) gives the spans; without it they are None."""
    block = None
    if validated is not None:
        block = validated.resolved.blocks.get(arch.name)
    import networkx as nx

    where = ModelSpans(block)
    d, V = arch.d_model, arch.vocab
    g = nx.DiGraph(kind="architecture", name=arch.name)
    # edge order for the renderers; a counter, since g.number_of_edges() walks every node and
    # made a deep model's graph quadratic in its layers
    order = itertools.count()

    def node(nid: str, kind: str, label: str, group: str, span: Span | None, **attrs) -> str:
        g.add_node(nid, kind=kind, label=label, group=group, span=span, **attrs)
        return nid

    def edge(src: str, dst: str, shape: str, **attrs) -> None:
        g.add_edge(src, dst, shape=shape, label=shape, order=next(order), **attrs)

    enc_dec = arch.arch == "encoder_decoder"
    # sequence-length names: an encoder-decoder reads S source tokens and writes T target tokens
    seq = {"encoder": "S" if enc_dec else "T", "decoder": "T"}
    shared = "S|T" if enc_dec else "T"

    # ---- inputs and embeddings (shared by both stacks of an encoder-decoder)
    inputs = [(ids, length) for stack_name, ids, length in (
        ("encoder", "input_ids", seq["encoder"]), ("decoder", "decoder_input_ids" if enc_dec else "input_ids", "T"))
        if getattr(arch, stack_name) is not None]
    for ids, _ in inputs:
        node(ids, "input", ids, "embeddings", where.model("vocab"))
    emb = node("token_embedding", "embedding", f"token embedding\n{V} x {d}", "embeddings",
               where.model("vocab", "d_model"), vocab=V, d_model=d)
    for ids, length in inputs:
        edge(ids, emb, _shape("B", length))
    sources = [(emb, _shape("B", shared, d))]
    if arch.shared_positions:  # a stack with a table of its own (BART) draws it with the stack
        node("position_ids", "input", "position_ids", "embeddings", where.model("position"))
        rows, offset = arch.context + arch.position_offset, arch.position_offset  # OPT, RoBERTa: from row 2
        label = f"learned positions\n{rows} x {d}" + (f", from row {offset}" if offset else "")
        pos = node("position_embedding", "embedding", label, "embeddings",
                   where.model("position", "position_offset"), rows=rows)
        edge("position_ids", pos, _shape(1, shared))
        sources.append((pos, _shape(1, shared, d)))
    elif arch.position.kind == "sinusoidal":
        pos = node("position_embedding", "embedding", "sinusoidal positions", "embeddings", where.model("position"))
        sources.append((pos, _shape(1, shared, d)))
    elif arch.position.kind != "learned":
        notes = {
            "rope": f"positions: {_position_text(arch)}\nrotates q and k in every attention",
            "alibi": "positions: alibi\na per-head linear distance bias in every attention",
            "relative": f"positions: {_position_text(arch)}\na learned bias per stack, added to attention scores",
            "none": "positions: none\nattention sees no order but the mask's",
        }
        node("positions", "note", notes[arch.position.kind], "embeddings", where.model("position"),
             position=arch.position.kind)
    if arch.segments > 0:
        node("segment_ids", "input", "segment_ids", "embeddings", where.model("segments"))
        seg = node("segment_embedding", "embedding", f"segment embedding\n{arch.segments} x {d}", "embeddings",
                   where.model("segments"), rows=arch.segments)
        edge("segment_ids", seg, _shape("B", seq["encoder"] if enc_dec else shared))
        sources.append((seg, _shape("B", seq["encoder"] if enc_dec else shared, d)))
    out = emb
    if len(sources) > 1:
        scale = f" x {arch.embed_scale:g}" if arch.embed_scale != 1 else ""
        out = node("embeddings", "add", "+" + scale, "embeddings", where.model("embed_scale", "position"))
        for src, shape in sources:
            edge(src, out, shape)
    if arch.shared_embed_norm:
        node("embed_norm", "norm", f"embedding {arch.norm}", "embeddings", where.model("embed_norm"), norm=arch.norm)
        edge(out, "embed_norm", _shape("B", shared, d))
        out = "embed_norm"
    embedded = out

    stack_out: dict[str, str] = {}
    for stack_name in ("encoder", "decoder"):
        stack: StackConfig | None = getattr(arch, stack_name)
        if stack is None:
            continue
        T = seq[stack_name]
        hidden = _shape("B", T, d)
        prev = embedded
        if stack.own_positions:  # BART: the stack's own table, added to the token embeddings
            rows, offset = arch.context + arch.position_offset, arch.position_offset
            label = f"{stack_name} learned positions\n{rows} x {d}" + (f", from row {offset}" if offset else "")
            pos = node(f"{stack_name}.position_embedding", "embedding", label, "embeddings",
                       where.stack(stack_name, "position"), rows=rows)
            add = node(f"{stack_name}.embeddings", "add", "+", "embeddings", where.stack(stack_name, "position"))
            edge(prev, add, hidden)
            edge(pos, add, _shape(1, T, d))
            prev = add
        if stack.own_embed_norm:
            norm_id = node(f"{stack_name}.embed_norm", "norm", f"{stack_name} embedding {arch.norm}", "embeddings",
                           where.stack(stack_name, "embed_norm"), norm=arch.norm)
            edge(prev, norm_id, hidden)
            prev = norm_id
        first_relative = next((i for i, l in enumerate(stack.layers) if l.position.kind == "relative"), None)
        rel_node = None
        if first_relative is not None:  # one table per stack, shared by its relative layers (LMS068)
            relative = stack.layers[first_relative]
            rel_node = node(f"{stack_name}.relative_bias", "embedding",
                            f"relative position bias\n{relative.position.buckets} buckets x {relative.heads} heads",
                            stack_name, where.layer(stack_name, first_relative, "position"),
                            buckets=relative.position.buckets, max_distance=relative.position.max_distance)
        for i, layer in enumerate(stack.layers):
            p = f"{stack_name}.{i}"
            norm_span = where.layer(stack_name, i, "norm")
            parts: list[tuple[str, str]] = []  # (sublayer, its norm) in order
            attn = node(f"{p}.attn", "attention", f"{p}: " + _attention_text(layer), stack_name,
                        where.layer(stack_name, i, "attention", "heads", "kv_heads", "head_dim", "position"),
                        layer=i, heads=layer.heads, kv_heads=layer.kv_heads, head_dim=layer.head_dim,
                        attention=layer.attention.kind, window=layer.attention.window,
                        position=layer.position.kind)
            parts.append((attn, node(f"{p}.attn_norm", "norm", f"{p}: {layer.norm}", stack_name, norm_span,
                                     norm=layer.norm)))
            if rel_node is not None and layer.position.kind == "relative":
                edge(rel_node, attn, _shape(1, layer.heads, T, T))
            if layer.cross_attention:
                cross = node(f"{p}.cross_attn", "cross_attention",
                             f"{p}: cross-attention\n{layer.heads} heads x {layer.head_dim}", stack_name,
                             where.layer(stack_name, i, "heads", "kv_heads", "head_dim"), layer=i, heads=layer.heads,
                             kv_heads=layer.kv_heads, head_dim=layer.head_dim)
                parts.append((cross, node(f"{p}.cross_norm", "norm", f"{p}: {layer.norm}", stack_name, norm_span,
                                          norm=layer.norm)))
            gated = layer.activation in GATED_ACTIVATIONS
            moe = getattr(layer, "moe", None)
            mlp_text = f"{p}: MLP {d} -> {layer.d_ff} -> {d}\n{layer.activation}"
            if moe is not None:  # a router picks top_k of the experts for each token
                shared = f" + {moe.shared_experts} shared" if moe.shared_experts else ""
                mlp_text = (f"{p}: mixture of experts, top-{moe.top_k} of {moe.experts}{shared}\n"
                            f"each MLP {d} -> {layer.d_ff} -> {d}, {layer.activation}")
            mlp = node(f"{p}.mlp", "mlp", mlp_text, stack_name,
                       where.layer(stack_name, i, "d_ff", "activation", "mlp"), layer=i, d_ff=layer.d_ff,
                       activation=layer.activation,
                       gated=gated, experts=moe.experts if moe else 0, top_k=moe.top_k if moe else 0)
            if getattr(layer, "parallel", False):  # x + attn(norm(x)) + mlp(norm'(x)): pre-norm, no cross-attention
                attn_norm = parts[0][1]
                mlp_norm = attn_norm if layer.shared_norm else node(
                    f"{p}.mlp_norm", "norm", f"{p}: {layer.norm}", stack_name, norm_span, norm=layer.norm)
                add = node(f"{p}.add", "add", f"{p}: + (attention and MLP in parallel)", stack_name,
                           where.layer(stack_name, i, "residual"))
                edge(prev, attn_norm, hidden)
                edge(attn_norm, attn, hidden)
                if mlp_norm is not attn_norm:
                    edge(prev, mlp_norm, hidden)
                edge(mlp_norm, mlp, hidden)
                edge(attn, add, hidden)
                edge(mlp, add, hidden)
                edge(prev, add, hidden, residual=True)
                prev = add
                continue
            parts.append((mlp, node(f"{p}.mlp_norm", "norm", f"{p}: {layer.norm}", stack_name, norm_span,
                                    norm=layer.norm)))
            for sub, norm in parts:
                # pre: x + sub(norm(x)); sandwich: x + post(sub(norm(x))); post: norm(x + sub(x)). The
                # residual edge carries x past the sublayer to where it is added back.
                if layer.placement == "pre":
                    edge(prev, norm, hidden)
                    edge(norm, sub, hidden)
                    edge(prev, sub, hidden, residual=True)
                    prev = sub
                elif layer.placement == "sandwich":  # x + post(sub(norm(x))): the add is at the post norm
                    post = node(norm.removesuffix("_norm") + "_post_norm", "norm",
                                f"{p}: {layer.norm} (on the output)", stack_name, where.model("placement"),
                                norm=layer.norm)
                    edge(prev, norm, hidden)
                    edge(norm, sub, hidden)
                    edge(sub, post, hidden)
                    edge(prev, post, hidden, residual=True)
                    prev = post
                else:
                    edge(prev, sub, hidden)
                    edge(sub, norm, hidden)
                    edge(prev, norm, hidden, residual=True)
                    prev = norm
        if stack.final_norm:
            last = stack.layers[-1]
            fn = node(f"{stack_name}.final_norm", "norm", f"{stack_name} final {last.norm}", stack_name,
                      where.model("final_norm", "placement"), norm=last.norm)
            edge(prev, fn, hidden)
            prev = fn
        stack_out[stack_name] = prev

    if enc_dec:  # every decoder layer's cross-attention reads the encoder output
        for i, layer in enumerate(arch.decoder.layers):
            edge(stack_out["encoder"], f"decoder.{i}.cross_attn", _shape("B", "S", d), memory=True)

    # ---- heads, on the last stack's output
    top = stack_out["decoder"] if arch.decoder is not None else stack_out["encoder"]
    T = seq["decoder"] if arch.decoder is not None else seq["encoder"]
    hidden = _shape("B", T, d)
    head_span = where.model("head")
    pooled = None
    if arch.pooler:
        pooled = node("pooler", "pooler", "pooler\ndense + tanh on the first token", "heads",
                      where.model("pooler"))
        edge(top, pooled, hidden)

    def pool_source(how: str) -> tuple[str, str]:
        if how == "first" and pooled is not None:
            return pooled, _shape("B", d)
        return top, hidden + f" -> {how} token" if how != "mean" else hidden + " -> mean"

    for h in arch.heads:
        if h.kind in ("lm", "mlm"):
            tied = " (tied to the token embedding)" if arch.tie_embeddings else ""
            label = "lm head" if h.kind == "lm" else "mlm head" + (" + transform" if h.transform else "")
            hn = node(f"{h.kind}_head", "head", f"{label}\n{d} -> {V}{tied}", "heads", head_span,
                      head=h.kind, tied=arch.tie_embeddings)
            edge(top, hn, hidden)
            if arch.tie_embeddings:
                g.add_edge(emb, hn, shape=_shape(V, d), label="tied", tied=True, order=next(order))
            # with both vocabulary heads the lm head writes `logits` (Transformer._heads)
            if h.kind == "lm" or arch.head("lm") is None:
                node("logits", "output", "logits", "heads", head_span)
                edge(hn, "logits", _shape("B", T, V))
        elif h.kind == "nsp":
            hn = node("nsp_head", "head", f"nsp head\n{d} -> 2", "heads", head_span, head="nsp")
            src, shape = pool_source("first")
            edge(src, hn, shape)
            node("nsp_logits", "output", "nsp_logits", "heads", head_span)
            edge(hn, "nsp_logits", _shape("B", 2))
        elif h.kind == "classifier":
            hn = node("classifier_head", "head", f"classifier head ({h.pool})\n{d} -> {h.classes}", "heads",
                      head_span, head="classifier", classes=h.classes, pool=h.pool)
            src, shape = pool_source(h.pool)
            edge(src, hn, shape)
            node("class_logits", "output", "class_logits", "heads", head_span)
            edge(hn, "class_logits", _shape("B", h.classes))
        elif h.kind == "scalar":
            hn = node("scalar_head", "head", f"scalar head ({h.pool})\n{d} -> 1", "heads", head_span,
                      head="scalar", pool=h.pool)
            src, shape = pool_source(h.pool)
            edge(src, hn, shape)
            node("scores", "output", "scores", "heads", head_span)
            edge(hn, "scores", _shape("B"))
    if not arch.heads:
        node("hidden", "output", "hidden states", "heads", head_span)
        edge(top, "hidden", hidden)
    return g


# ============================================================================ rendering

_DOT_SHAPES = {
    # experiment
    "tokenizer": "hexagon", "data": "cylinder", "model": "box3d", "train": "box", "rl": "box",
    "judge": "diamond", "feedback": "folder",
    # architecture
    "input": "plaintext", "output": "plaintext", "embedding": "box", "add": "circle", "norm": "box",
    "attention": "box", "cross_attention": "box", "mlp": "box", "pooler": "box", "head": "box", "note": "note",
}
_ROUNDED = {"train", "rl", "attention", "cross_attention", "mlp", "head"}


def _dot_quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _groups(g: nx.DiGraph) -> dict[str, list]:
    groups: dict[str, list] = {}
    for n, data in g.nodes(data=True):
        groups.setdefault(data.get("group") or "", []).append(n)
    return groups


def _grouped_node_lines(g: nx.DiGraph, node_line: Callable[[Any, dict, str], str],
                        opening: Callable[[str], list[str]], closing: str) -> list[str]:
    """Every node's line, the nodes of a group (an architecture graph's embeddings, encoder,
    ...) indented between the group's opening lines and `closing`."""
    lines: list[str] = []
    for group, nodes in _groups(g).items():
        if group:
            lines += opening(group)
            lines += [node_line(n, g.nodes[n], "    ") for n in nodes]
            lines.append(closing)
        else:
            lines += [node_line(n, g.nodes[n], "  ") for n in nodes]
    return lines


def _dashed(data: dict) -> bool:
    """Edges drawn dashed: residual connections, the implicit tokenizer, tied weights."""
    return bool(data.get("residual") or data.get("implicit") or data.get("tied"))


def _node_label(n, data: dict) -> str:
    return str(data.get("label") or n)


def _edge_label(data: dict) -> str:
    return str(data.get("label") or "")


def _edges(g: nx.DiGraph) -> list[tuple]:
    """Edges in the order they were added (networkx groups them by source node)."""
    edges = list(g.edges(data=True))
    return sorted(edges, key=lambda e: e[2].get("order", 0)) if all("order" in e[2] for e in edges) else edges


def to_dot(g: nx.DiGraph) -> str:
    """Graphviz text. Deterministic: nodes and edges in the order the graph was built;
    architecture nodes are grouped in clusters (embeddings, encoder, decoder, heads)."""
    name = g.graph.get("name") or g.graph.get("kind") or "lmspec"
    lines = [f"digraph {_dot_quote(name)} {{",
             "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']

    def node_line(n, data, indent: str) -> str:
        kind = data.get("kind", "")
        attrs = [f"label={_dot_quote(_node_label(n, data))}", f"shape={_DOT_SHAPES.get(kind, 'box')}"]
        if kind in _ROUNDED:
            attrs.append('style="rounded"')
        return f"{indent}{_dot_quote(n)} [{', '.join(attrs)}];"

    def cluster(group: str) -> list[str]:
        return [f"  subgraph {_dot_quote('cluster_' + group)} {{", f"    label={_dot_quote(group)}; style=dashed;"]

    lines += _grouped_node_lines(g, node_line, cluster, "  }")
    for u, v, data in _edges(g):
        attrs = []
        label = _edge_label(data)
        if label:
            attrs.append(f"label={_dot_quote(label)}")
        if _dashed(data):
            attrs.append("style=dashed")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  {_dot_quote(u)} -> {_dot_quote(v)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


_MERMAID_SHAPES = {
    "tokenizer": ("{{", "}}"), "data": ("[(", ")]"), "model": ("[[", "]]"), "train": ("([", "])"),
    "rl": ("([", "])"), "judge": ("{", "}"), "feedback": (">", "]"),
    "input": ("[/", "/]"), "output": ("[/", "/]"), "add": ("((", "))"), "note": (">", "]"),
}
_MERMAID_RESERVED = {"end", "graph", "subgraph", "flowchart", "style", "class", "classDef", "click", "linkStyle",
                     "default", "direction"}


def _mermaid_text(text: str) -> str:
    return '"' + str(text).replace('"', "#quot;").replace("\n", "<br/>") + '"'


def to_mermaid(g: nx.DiGraph) -> str:
    """Mermaid flowchart text, deterministic like `to_dot`."""
    ids: dict[Any, str] = {}
    taken: set[str] = set()
    for n in g.nodes:
        base = re.sub(r"[^A-Za-z0-9_]", "_", str(n)) or "node"
        if base[0].isdigit() or base in _MERMAID_RESERVED:
            base = "n_" + base
        nid, k = base, 2
        while nid in taken:
            nid, k = f"{base}_{k}", k + 1
        ids[n] = nid
        taken.add(nid)

    lines = ["flowchart TD"]

    def node_line(n, data, indent: str) -> str:
        open_, close = _MERMAID_SHAPES.get(data.get("kind", ""), ("[", "]"))
        return f"{indent}{ids[n]}{open_}{_mermaid_text(_node_label(n, data))}{close}"

    def subgraph(group: str) -> list[str]:
        gid = "cluster_" + re.sub(r"[^A-Za-z0-9_]", "_", group)
        return [f"  subgraph {gid} [{_mermaid_text(group)}]"]

    lines += _grouped_node_lines(g, node_line, subgraph, "  end")
    for u, v, data in _edges(g):
        arrow = "-.->" if _dashed(data) else "-->"
        label = _edge_label(data)
        lines.append(f"  {ids[u]} {arrow}|{_mermaid_text(label)}| {ids[v]}" if label else f"  {ids[u]} {arrow} {ids[v]}")
    return "\n".join(lines) + "\n"


# ============================================================================ lmspec graph


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one clear line, exit 2
        self.print_usage(sys.stderr)
        print(f"lmspec graph: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def graph_main(argv: list[str]) -> int:
    """`lmspec graph SPEC [--format dot|mermaid] [--model NAME]`.

    Prints the experiment graph, or with --model the architecture graph of that model.
    Exit 0 on success (warnings go to stderr), 1 when the spec has errors (rendered on
    stderr), 2 on a usage error or a missing file."""
    from lmspec.compiler.api import check_file
    from lmspec.diagnostics import closest, render_text, use_colour

    parser = _Parser(prog="lmspec graph", description="Print the experiment graph of a spec, or a model's "
                     "architecture graph, as Graphviz dot or Mermaid text.")
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--format", choices=("dot", "mermaid"), default="dot", help="output format (default dot)")
    parser.add_argument("--model", metavar="NAME", help="draw this model's architecture instead of the experiment")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not Path(args.spec).is_file():
        print(f"lmspec graph: error: no such file: {args.spec}", file=sys.stderr)
        return 2
    report = check_file(args.spec)
    if report.diagnostics:
        print(render_text(report.diagnostics, report.sources, colour=use_colour(sys.stderr)), file=sys.stderr)
    if not report.ok or report.spec is None:
        return 1
    if args.model is not None:
        if args.model not in report.models:
            near = closest(args.model, report.models)
            hint = f"; did you mean '{near}'?" if near else ""
            print(f"lmspec graph: error: no model named '{args.model}' in {args.spec} "
                  f"(models: {', '.join(report.models) or 'none'}){hint}", file=sys.stderr)
            return 2
        graph = architecture_graph(report.models[args.model], report.spec)
    else:
        graph = experiment_graph(report.spec)
    sys.stdout.write(to_dot(graph) if args.format == "dot" else to_mermaid(graph))
    return 0
