"""The plots of a stage (PNG, matplotlib without a display): its loss curve, and for an rl
stage its reward and KL per step."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_losses", "plot_rl"]


def _pyplot():
    """matplotlib's pyplot on the display-less Agg backend; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, path: Path) -> Path:
    """Write the figure beside `path` and rename it into place, so a reader never sees half a PNG."""
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_losses(metrics: list[dict], path: Path, title: str) -> Path | None:
    """Train loss (and eval loss where evaluated) against step; None when there is nothing to
    draw or matplotlib is not installed."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if not train and not evals:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.2, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def plot_rl(metrics: list[dict], path: Path, title: str) -> Path | None:
    """Reward (per step, and on the held-out prompts where evaluated) above the KL to the
    reference, against step."""
    steps = [m for m in metrics if "reward" in m and "kl" in m]
    if not steps:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), dpi=100, sharex=True)
    top.plot([m["step"] for m in steps], [m["reward"] for m in steps], label="reward (rollouts)", linewidth=1.2)
    evals = [(m["step"], m["eval_reward"]) for m in metrics if m.get("eval_reward") is not None]
    before = next((m["before_eval_reward"] for m in metrics if m.get("before_eval_reward") is not None), None)
    if evals and before is not None:
        evals.insert(0, (0, before))  # the policy as it started
    if evals:
        top.plot(*zip(*evals), "o-", label="reward (held-out prompts)", linewidth=1.2, markersize=4)
    top.set_ylabel("reward")
    top.set_title(title)
    top.legend()
    bottom.plot([m["step"] for m in steps], [m["kl"] for m in steps], color="tab:red", linewidth=1.2)
    bottom.set_ylabel("KL to the reference (nats / sequence)")
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)
