"""Seeing a run: a live display on a terminal (rich), one plain line per log otherwise (CI logs),
and the summary table printed at the end of a run and by `lmspec show`."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "summary_rows", "render_summary"]


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """`live`: a rich progress bar with stage, step / total, loss, tokens/s and ETA; otherwise a
    line per logged step. `quiet` prints nothing but messages."""

    def __init__(self, *, live: bool | None = None, quiet: bool = False, stream=None):
        self.stream = stream or sys.stdout
        self.live = (self.stream.isatty() if live is None else live) and not quiet
        self.quiet = quiet
        self._bar = None
        self._task = None

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def start_stage(self, name: str, total: int, done: int = 0) -> None:
        self._name, self._total, self._t0, self._done0 = name, total, time.perf_counter(), done
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn("[bold]{task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                            TextColumn("eta"), TimeRemainingColumn(), console=Console(file=self.stream),
                            transient=False)
            self._bar.start()
            self._task = self._bar.add_task(name, total=total, completed=done, stage=name, loss="-", tps="-")
        elif not self.quiet:
            self.message(f"stage {name}: {total} steps" + (f", resuming after step {done}" if done else ""))

    def update(self, step: int, record: dict, *, logged: bool) -> None:
        loss = record.get("loss")
        tps = record.get("tokens_per_s")
        if self._bar is not None:
            fields = {}
            if loss is not None:
                fields["loss"] = f"{loss:.4f}"
            if tps is not None:
                fields["tps"] = f"{tps:,.0f}"
            self._bar.update(self._task, completed=step, **fields)
        elif logged and not self.quiet:
            elapsed = time.perf_counter() - self._t0
            rate = (step - self._done0) / elapsed if elapsed > 0 else 0
            eta = (self._total - step) / rate if rate > 0 else 0
            parts = [f"{self._name} step {step}/{self._total}"]
            for key in ("loss", "eval_loss", "accuracy", "lr", "grad_norm"):
                if key in record:
                    parts.append(f"{key} {record[key]:.4g}")
            if tps is not None:
                parts.append(f"{tps:,.0f} tok/s")
            parts.append(f"eta {_fmt_time(eta)}")
            self.message("  ".join(parts))

    def end_stage(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ----------------------------------------------------------------------------- summaries


def summary_rows(run) -> list[dict]:
    """Per stage: status, steps, final train and eval loss, tokens, time, tokens/s."""
    rows = []
    for stage in run.stages:
        metrics = run.metrics(stage)
        status = run.status(stage)
        train = [m for m in metrics if "loss" in m]
        evals = [m for m in metrics if "eval_loss" in m]
        tokens = metrics[-1].get("tokens", 0) if metrics else 0  # cumulative in every line
        seconds = status.get("seconds", 0.0)
        row = {"stage": stage, "status": status.get("status", "pending"),
               "steps": f"{status.get('step', 0)}/{status.get('total', '?')}",
               "loss": train[-1]["loss"] if train else None, "eval_loss": evals[-1]["eval_loss"] if evals else None,
               "tokens": tokens, "time": seconds, "tokens_per_s": tokens / seconds if seconds else None}
        for key in ("accuracy", "perplexity"):
            if evals and key in evals[-1]:
                row[key] = evals[-1][key]
        rows.append(row)
    return rows


def judge_agreement(run) -> list[str]:
    """For each finished feedback stage: how its judge labelled the pairs (final/agreement.json)."""
    import json

    out = []
    for stage in run.stages:
        path = run.path / "stages" / stage / "final" / "agreement.json"
        if not path.is_file():
            continue
        try:
            a = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not a.get("pairs"):
            continue
        out.append(f"{stage}: {a['pairs']:,} pairs; mean label {a['label_mean']:.3f}, decisive (|p - 0.5| >= 0.2) "
                   f"{100 * a['decisive']:.1f}%")
        hist = a.get("histogram", {})
        if hist:
            out.append("  labels  " + "  ".join(f"{k}: {v}" for k, v in hist.items()))
        if "swap_consistency" in a:
            out.append(f"  both orders agree on the winner: {100 * a['swap_consistency']:.1f}%; position bias "
                       f"{a['position_bias']:+.3f} (P(first wins) - P(second wins), halved)")
    return out


def before_after(run) -> list[str]:
    """For each rl stage that was evaluated: its held-out figures before the first update and
    after the last — the reward, each `eval_judges` judge's mean score and share, the length."""
    out = []
    for stage in run.stages:
        evals = [m for m in run.metrics(stage) if "before_eval_reward" in m]
        if not evals:
            continue
        last = evals[-1]
        steps = [m for m in run.metrics(stage) if "kl" in m]
        rows = []
        for key in sorted(k[len("before_"):] for k in last if k.startswith("before_eval_")):
            name = key[len("eval_"):]
            label = (f"{name[:-len('_share')]}: share judged positive" if name.endswith("_share") else
                     f"{name}: mean score")
            if name == "reward":
                label = "reward"
            elif name == "response_length":
                label = "response length (tokens)"
            pct = name.endswith("_share")
            fmt = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
            rows.append((label, fmt(last[f"before_{key}"]), fmt(last[key])))
        if steps:
            rows.append(("KL to the reference (last step)", f"{steps[0]['kl']:.3f}", f"{steps[-1]['kl']:.3f}"))
        width = max(len(r[0]) for r in rows)
        out.append(f"{stage}: before and after, on held-out prompts")
        out.append(f"  {'':<{width}}  {'before':>9}  {'after':>9}")
        out += [f"  {a:<{width}}  {b:>9}  {c:>9}" for a, b, c in rows]
    return out


def render_summary(run, stream=None, *, live: bool | None = None) -> None:
    stream = stream or sys.stdout
    rows = summary_rows(run)
    live = stream.isatty() if live is None else live

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    header = ["stage", "status", "steps", "loss", "eval loss", "accuracy", "tokens", "time", "tokens/s"]
    table = [[r["stage"], r["status"], r["steps"], num(r["loss"], ".4f"), num(r["eval_loss"], ".4f"),
              num(r.get("accuracy"), ".3f"), f"{r['tokens']:,}", _fmt_time(r["time"]), num(r["tokens_per_s"], ",.0f")]
             for r in rows]
    if live:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"run {run.path}")
        for h in header:
            t.add_column(h, justify="left" if h in ("stage", "status") else "right")
        for row in table:
            t.add_row(*row)
        Console(file=stream).print(t)
    else:
        widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(header)]
        print(f"run {run.path}", file=stream)
        print("  " + "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))),
              file=stream)
        for row in table:
            print("  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))),
                  file=stream)
    for line in judge_agreement(run) + before_after(run):
        print(line, file=stream)
    plots = [run.path / "stages" / r["stage"] / name for r in rows for name in ("loss.png", "rl.png")]
    plots = [p for p in plots if p.exists()]
    if plots:
        print("plots: " + ", ".join(str(p) for p in plots), file=stream)
