"""A `judge` block -> a runtime `Judge`, wrapped in the run's judgment cache.

    model: critic from STAGE     ModelJudge over the stage's weights and tokenizer (model.py)
    model: hf("dir")             LMJudge over a local causal LM (local.py), on the run's device
    model: openai(url, model)    LMJudge over an OpenAI-compatible server (openai.py)
    score: length | contains | regex        a rule (rules.py)
    score: a + 0.1 * contains("x")          WeightedSum of the judges and rules it adds (rules.py)

`check` has made sure the block is one of these, whole (lmspec.compiler.rules_judges). What only a
run can know fails here, in the stage's setup, before its first step: a missing checkpoint file,
an API key variable that is not set (the endpoint reads it as it is made).
"""

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
    """The judge block `name`, its every judgment cached in RUN/judgments/NAME.jsonl. The judges
    a sum adds keep their own files, and one that several of its terms reach is built once."""
    return _cached(name, ctx, within=(), built={})


def _cached(name: str, ctx, within: tuple[str, ...], built: dict[str, Judge]) -> Judge:
    if name in within:  # check refuses the cycle (LMS079); a spec that skipped check must not recurse forever
        raise RunError(f"judges add each other in a cycle: {' -> '.join(within + (name,))}",
                       help="remove one of the terms")
    if name not in built:
        spec = ctx.report.spec.blocks[name]
        try:
            judge = _judge(name, spec, ctx, within + (name,), built)
        except JudgeError as err:
            raise RunError(str(err), help=err.help) from None
        built[name] = CachedJudge(judge, ctx.run_path / "judgments" / f"{name}.jsonl")
    return built[name]


def _judge(name: str, spec, ctx, within: tuple[str, ...], built: dict[str, Judge]) -> Judge:
    from lmspec.compiler import schema as S

    model, score = spec.model, spec.score
    if isinstance(model, S.ModelUse):
        from .model import ModelJudge

        net, tokenizer, arch, weights = stage_model(ctx, model, what=f"judge '{name}'")
        return ModelJudge(name, net, tokenizer, score=score.kind, cls=getattr(score, "cls", None),
                          context=arch.context, weights=weights, device=ctx.device)
    if isinstance(model, (S.HFInit, S.OpenAIModel)):
        return _lm_judge(name, spec, ctx)
    if isinstance(score, S.ScoreSum):
        from .rules import WeightedSum

        return WeightedSum(name, [(t.weight, _cached(t.judge, ctx, within, built) if isinstance(t.judge, str)
                                   else _rule(f"{name}.{t.judge.kind}", t.judge)) for t in score.terms])
    return _rule(name, score)


def _rule(name: str, score) -> Judge:
    from .rules import Contains, Length, Regex

    if score.kind == "length":
        return Length(name)
    if score.kind == "contains":
        return Contains(score.text, name)
    return Regex(score.pattern, name)


def _lm_judge(name: str, spec, ctx) -> Judge:
    """An LM labeller: the block's task, template and principles over its backend."""
    from lmspec.compiler import schema as S
    from lmspec.compiler.compile import spec_relative

    labeller = {"task": spec.task, "principles": list(spec.principles), "principles_mode": spec.principles_mode}
    if spec.prompt is not None:
        labeller["template"] = spec.prompt
    model = spec.model
    if isinstance(model, S.HFInit):
        from .local import from_options

        path = spec_relative(model.path, ctx.report.spec.resolved.blocks[name].span.file)
        return from_options({"path": str(path), "device": str(ctx.device), **labeller}, name=name)
    from .openai import from_options

    server = {k: getattr(model, k) for k in ("url", "model", "api", "concurrency", "timeout", "retries",
                                             "top_logprobs")}
    if model.api_key_env is not None:
        server["api_key_env"] = model.api_key_env
    return from_options({**server, **labeller}, name=name)
