"""Stages, one file per kind, behind the protocol of `base`."""

from __future__ import annotations

from .base import RunContext, Stage, StageArtifacts

__all__ = ["Stage", "RunContext", "StageArtifacts", "make_stage", "STAGE_KINDS"]

def _train():
    from .train import TrainStage

    return TrainStage


def _feedback():
    from .feedback import FeedbackStage

    return FeedbackStage


def _rl():
    from .rl import RLStage

    return RLStage


# stage kind -> a function giving its class (imported when a run needs it)
STAGE_KINDS = {"train": _train, "feedback": _feedback, "rl": _rl}


def make_stage(plan, ctx: RunContext) -> Stage:
    if plan.kind not in STAGE_KINDS:
        raise NotImplementedError(f"{plan.kind} stages cannot run yet")
    return STAGE_KINDS[plan.kind]()(plan, ctx)
