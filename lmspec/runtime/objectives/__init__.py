"""Training objectives, one small module each, behind the protocol in `base`.

`build_objective(term_spec, ctx)` makes one term; `compose(terms)` orders the terms of a
weighted sum so that the one that shapes the batch comes first.
"""

from __future__ import annotations

from lmspec.compiler.rules_stages import BUILDS_FIRST, combinable  # one table for check and run

from .base import IGNORE, Context, Objective, Reads, model_inputs
from .bradley_terry import BradleyTerry
from .classify import Classify
from .clm import CausalLM
from .dpo import DPO
from .mlm import MaskedLM
from .nsp import NextSentence
from .prefix_lm import PrefixLM
from .sft import SFT
from .span_corruption import SpanCorruption

__all__ = ["IGNORE", "Context", "Objective", "Reads", "model_inputs", "build_objective", "compose", "combinable",
           "OBJECTIVES", "BUILDS_FIRST"]

# a closed table: a spec names an objective kind, never a class or a module
OBJECTIVES: dict[str, type[Objective]] = {
    "clm": CausalLM, "mlm": MaskedLM, "nsp": NextSentence, "span_corruption": SpanCorruption, "prefix_lm": PrefixLM,
    "sft": SFT, "classify": Classify, "bradley_terry": BradleyTerry, "dpo": DPO,
}

def build_objective(spec, ctx: Context) -> Objective:
    """The objective of one term's spec (schema.CLM, schema.MLM, ...)."""
    if spec.kind not in OBJECTIVES:
        raise NotImplementedError(f"objective '{spec.kind}' is trained by an rl or preference stage, "
                                  "which this version of lmspec cannot run yet")
    return OBJECTIVES[spec.kind](spec, ctx)


def compose(terms: list[tuple[float, Objective]]) -> list[tuple[float, Objective]]:
    """The terms with the one that builds the batch first; raises ValueError when the terms
    cannot share one batch (`check` reports that as LMS088 before a run)."""
    kinds = [o.kind for _, o in terms]
    why = combinable(kinds)
    if why:
        raise ValueError(f"objectives {' + '.join(kinds)} cannot be trained together: {why}")
    builder = next(k for k in BUILDS_FIRST if k in kinds)
    return sorted(terms, key=lambda t: t[1].kind != builder)
