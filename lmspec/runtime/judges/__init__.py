"""Judges: the AI (or rule) that gives feedback. The protocol is in `base`."""

from __future__ import annotations

from .base import Judge, JudgeError, logit, pointwise_compare, swap_debiased

__all__ = ["Judge", "JudgeError", "logit", "pointwise_compare", "swap_debiased"]
