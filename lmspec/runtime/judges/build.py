"""A `judge` block -> a runtime `Judge`, wrapped in the run's judgment cache."""

from __future__ import annotations

from lmspec.runtime.errors import RunError

from .base import Judge, JudgeError
from .cache import CachedJudge

__all__ = ["build_judge", "stage_model"]


def stage_model(ctx, use, *, what: str, arch=None):
    """(model, tokenizer, arch, weights path) of `MODEL from STAGE` after STAGE has run; `arch`
    is the stage's own when its head differs from the model block's (`gpt with head scalar`)."""
    from lmspec.compiler.build import build_model
    from lmspec.runtime.checkpoint import load_weights
    from lmspec.runtime.tokenizers import load_tokenizer

    arch = arch or ctx.report.models[use.model]
    done = ctx.artifacts.get(use.stage) if use.stage else None
    if use.stage and (done is None or done.weights is None):
        raise RunError(f"{what} reads the weights of stage '{use.stage}', which has not produced them",
                       help=f"run stage '{use.stage}' first (it is scheduled before; was it skipped?)")
    model = build_model(arch, device=ctx.device)
    if done is not None:
        load_weights(model, done.weights)
    tokenizer = load_tokenizer(done.tokenizer) if done is not None and done.tokenizer else ctx.tokenizer(None)[0]
    return model.eval(), tokenizer, arch, (done.weights if done is not None else None)


def build_judge(name: str, ctx) -> Judge:
    """The judge block `name`, its every judgment cached in RUN/judgments/NAME.jsonl."""
    from .model import ModelJudge

    spec = ctx.report.spec.blocks[name]
    model = spec.model
    try:
        if getattr(model, "kind", None) == "hf":
            raise RunError(f"judge '{name}': Hugging Face LM judges (model: hf(...)) are not wired to the runtime yet",
                           help="use a judge trained in the spec: `model: critic from STAGE`")
        net, tokenizer, arch, weights = stage_model(ctx, model, what=f"judge '{name}'")
        score = spec.score
        judge = ModelJudge(name, net, tokenizer, score=score.kind, cls=getattr(score, "cls", None),
                           context=arch.context, weights=weights, device=ctx.device)
    except JudgeError as err:
        raise RunError(str(err), help=err.help) from None
    return CachedJudge(judge, ctx.run_path / "judgments" / f"{name}.jsonl")
