"""The `lmspec` command: a thin layer over the Python API.

Exit codes: 0 success; 1 the spec has errors (diagnostics printed);
2 a usage error (bad arguments, a missing file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmspec.diagnostics import render_json, render_text, use_colour

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with one clear line, no traceback
        self.print_usage(sys.stderr)
        print(f"lmspec: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _summary(report, schedule) -> str:
    lines = []
    spec = report.spec
    if spec is None:
        return ""
    by_kind: dict[str, list[str]] = {}
    for name, block in spec.resolved.blocks.items():
        by_kind.setdefault(block.kind, []).append(name)
    for kind, names in by_kind.items():
        lines.append(f"  {kind:<10} {', '.join(names)}")
    if report.ok:
        order = schedule.names()
        if order:
            lines.append(f"  {'schedule':<10} {' -> '.join(order)}")
    return "\n".join(lines)


def cmd_check(args) -> int:
    from lmspec.compiler.api import check_file

    missing = [p for p in args.specs if not Path(p).is_file()]
    if missing:
        for p in missing:
            what = "is a directory, not a spec file" if Path(p).is_dir() else "no such file"
            print(f"lmspec: error: {p}: {what}", file=sys.stderr)
        return 2
    from lmspec.compiler.analysis.meta_cache import use_meta_cache
    from lmspec.compiler.compile import check_stages
    from lmspec.compiler.costs import render_figures

    status = 0
    results = []
    from lmspec.compiler.rules_parallel import device_plans, render_device_plans

    for path in args.specs:
        report = check_file(path, devices=args.devices, device_memory=args.device_memory)
        figures = schedule = None
        plans = {}
        if report.ok:
            with use_meta_cache():  # a model checked before on this machine is not run again
                schedule, figures = check_stages(report, meta=not args.no_meta)
            plans = device_plans(report)  # stages with devices or a device memory: memory per device
        status = status or (0 if report.ok else 1)
        if args.json:
            shown = figures.to_json() if figures is not None and report.ok else None
            for name, plan in plans.items():
                if shown is not None and name in shown["stages"]:
                    shown["stages"][name]["per_device"] = plan.to_json()
            results.append({"file": path, "ok": report.ok,
                            "blocks": {n: b.kind for n, b in report.spec.resolved.blocks.items()} if report.spec else {},
                            "figures": shown, "diagnostics": json.loads(render_json(report.diagnostics))})
            continue
        if report.diagnostics:
            print(render_text(report.diagnostics, report.sources, colour=use_colour(sys.stderr)), file=sys.stderr)
        if report.ok:
            print(f"{path}: ok")
            summary = _summary(report, schedule)
            if summary:
                print(summary)
            if figures is not None and (figures.models or figures.stages):
                print(render_figures(figures))
            if plans:
                print(render_device_plans(plans))
    if args.json:  # one shape for one file or many: {"ok": every file ok, "files": [one report a file]}
        print(json.dumps({"ok": status == 0, "files": results}, indent=2))
    return status


def cmd_schema(args) -> int:
    from lmspec.compiler.json_schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_graph(args) -> int:
    from lmspec.compiler.graphs import graph_main

    return graph_main(args.rest)


def cmd_import_hf(args) -> int:
    from lmspec.compiler.hf import import_hf_main

    return import_hf_main(args.rest)


def _run_error(err) -> int:
    """A runtime error for bad input: one clear message, no traceback, exit 1."""
    print(f"lmspec: error: {err.message}", file=sys.stderr)
    if err.help:
        print(f"  = help: {err.help}", file=sys.stderr)
    return 1


def _lmspec_error(err) -> int:
    print(render_text(err.diagnostics, err.sources, colour=use_colour(sys.stderr)), file=sys.stderr)
    return 1


def _usage(message: str) -> int:
    print(f"lmspec: error: {message}", file=sys.stderr)
    return 2


def cmd_run(args) -> int:
    from lmspec.diagnostics import LmspecError
    from lmspec.runtime import distributed
    from lmspec.runtime.api import resume, run
    from lmspec.runtime.errors import RunError

    if args.resume and args.spec:
        return _usage("give either a SPEC or --resume DIR, not both")
    if not args.resume and not args.spec:
        return _usage("lmspec run needs a SPEC (or --resume DIR); e.g. lmspec run specs/quickstart.lmspec")
    if args.resume and (args.out or args.only):
        return _usage("--out and --only belong to a new run; --resume continues the run as it was started")
    if args.force and not args.resume:
        return _usage("--force only applies to --resume")
    if args.port is not None and args.nproc == 1:
        return _usage("--port is the rendezvous port of --nproc N workers; with one process there is none")
    progress = _run_progress(args)
    options = dict(device=args.device, progress=progress, tensorboard=args.tensorboard, nproc=args.nproc,
                   backend=args.backend, port=args.port)
    try:
        try:
            if args.resume:
                resume(args.resume, force=args.force, overrides=args.set, **options)
            else:
                run(args.spec, overrides=args.set, out=args.out, only=args.only, **options)
        except LmspecError as err:
            return _worker_error(err, distributed) or _lmspec_error(err)
        except RunError as err:
            return _worker_error(err, distributed) or _run_error(err)
        except Exception as err:  # a worker whose peers are gone: the launcher names the rank that failed
            if distributed.env_world_size() > 1 and distributed.lost_peers(err):
                distributed.report_failure(f"lost the other ranks ({str(err).splitlines()[0][:200]})",
                                           kind="lost_peers")
                return 1
            raise
    except KeyboardInterrupt:
        if distributed.env_world_size() > 1:
            distributed.report_failure("interrupted", kind="lost_peers")
        raise
    return 0


def _run_progress(args):
    """A worker started by `lmspec run --nproc` shows progress as the launching command asked."""
    import os

    from lmspec.runtime.distributed import WORKER_PROGRESS
    from lmspec.runtime.progress import Progress

    mode = os.environ.get(WORKER_PROGRESS)
    if mode == "quiet":
        return Progress(quiet=True)
    if mode in ("live", "plain"):
        return Progress(live=mode == "live" and not args.plain)
    return Progress(live=None if not args.plain else False)


def _worker_error(err, distributed) -> int | None:
    """In a worker: hand the error to the launcher (which names the rank) and print it only on
    rank 0 of a torchrun that no lmspec launcher watches. None outside a worker."""
    if distributed.env_world_size() == 1:
        return None
    message = getattr(err, "message", None) or str(err)
    distributed.report_failure(message, getattr(err, "help", None))
    if distributed.env_rank() == 0 and not distributed.launched():
        return None
    return 1


def cmd_show(args) -> int:
    from lmspec.runtime.api import open_run
    from lmspec.runtime.errors import RunError
    from lmspec.runtime.plots import plot_losses
    from lmspec.runtime.progress import render_summary

    try:
        r = open_run(args.run)
        for stage in r.stages:
            try:
                plot_losses(r.metrics(stage), r.path / "stages" / stage / "loss.png", stage)
            except OSError as err:  # a read-only run: show it anyway
                print(f"(could not redraw {stage}'s plot: {err.strerror or err})", file=sys.stderr)
        m = r.manifest
        status = m.get("status")
        if status == "running" and not r.is_live():
            status = "stopped (no process is running it: killed?); resume with `lmspec run --resume " + str(r.path) + "`"
        print(f"spec {m.get('spec')}  status {status}  started {m.get('started')}  "
              f"finished {m.get('finished') or '-'}  device {m.get('device')}")
        render_summary(r)
        for stage, why in (m.get("cannot_run") or {}).items():
            print(f"  {stage}: not run: {why}")
    except RunError as err:
        return _run_error(err)
    return 0


def cmd_sample(args) -> int:
    from lmspec.runtime.api import open_run
    from lmspec.runtime.errors import RunError
    from lmspec.runtime.sample import sample_texts

    try:
        r = open_run(args.run)
        stage = args.stage if args.stage is not None else ""  # "": the last stage that generates
        model, tok = r.model(stage), r.tokenizer(r.resolve_stage(stage))
        prompts = [line.rstrip("\n") for line in sys.stdin] if args.prompt == "-" else [args.prompt]
        for prompt in prompts:
            for i in range(args.num):  # sample i of every prompt draws from seed + i, as sample_texts does
                sys.stdout.write(prompt)
                sys.stdout.flush()
                sample_texts(model, tok, [prompt], max_tokens=args.max_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed + i, num=1,
                             on_text=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
                sys.stdout.write("\n")
    except RunError as err:
        return _run_error(err)
    return 0


def cmd_export_hf(args) -> int:
    from lmspec.compiler.hf import HFError
    from lmspec.runtime.errors import RunError
    from lmspec.runtime.export import export_run

    try:
        export_run(args.run, args.out, stage=args.stage, log=lambda m: print(f"lmspec export-hf: {m}", file=sys.stderr))
    except RunError as err:
        return _run_error(err)
    except HFError as err:  # an architecture no Hugging Face family expresses, with what it lacks
        print(f"lmspec: error: {err}", file=sys.stderr)
        if getattr(err, "help", None):
            print(f"  = help: {err.help}", file=sys.stderr)
        return 1
    return 0


def _at_least(low, kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value
    return parse


def _size(text: str) -> str:
    """--device-memory: a size such as 80GB or 80GiB, checked here; kept as written."""
    from lmspec.compiler.rules_parallel import parse_size

    try:
        parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmspec", description="A declarative experiment language for language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("check", help="parse, resolve and validate specs; print what they cost")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-meta", action="store_true",
                   help="skip the forward/backward pass of each model on the meta device, and the "
                        "comparison of init: hf(...) checkpoints with their models")
    p.add_argument("--devices", type=_at_least(1, int), metavar="N",
                   help="plan every train stage for N devices (processes): memory per device under its parallel, "
                        "and a batch that splits over them; overrides the stages' devices:")
    p.add_argument("--device-memory", type=_size, metavar="SIZE",
                   help="the memory of one device, e.g. 80GB (10^9 bytes) or 80GiB (2^30): say whether each stage "
                        "fits; overrides the stages' device_memory:")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("run", help="train every stage of a spec into a run directory (or --resume one)")
    p.add_argument("spec", nargs="?", metavar="SPEC")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a key of a block, checked as the spec is (repeatable)")
    p.add_argument("--out", metavar="DIR", help="the run directory (default runs/NAME-TIMESTAMP); never overwritten")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    p.add_argument("--only", metavar="STAGE", help="run this stage and the stages it needs, nothing else")
    p.add_argument("--resume", metavar="DIR", help="continue a run from its last good checkpoints")
    p.add_argument("--force", action="store_true", help="with --resume: resume although the spec changed")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")
    p.add_argument("--plain", action="store_true", help="one line per log, even on a terminal")
    p.add_argument("--nproc", type=_at_least(1, int), default=1, metavar="N",
                   help="train with N processes on this machine (DDP through torch's elastic launcher; "
                        "batch stays the global batch); see docs/scaling.md")
    p.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"),
                   help="torch.distributed backend of the workers: auto (default) is nccl on CUDA, gloo on CPU")
    p.add_argument("--port", type=int, metavar="PORT",
                   help="the rendezvous port of the --nproc workers (default: a free one)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("show", help="print the summary of a run (finished or not) and redraw its plots")
    p.add_argument("run", metavar="RUN")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("sample", help="generate text from a trained stage of a run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--stage", help="default: the last finished stage")
    p.add_argument("--prompt", default="", help='the prompt; "-" reads prompts from stdin, one a line')
    p.add_argument("--temperature", type=_at_least(0.0, float), default=0.8, help=">= 0; 0 = greedy")
    p.add_argument("--top-k", type=_at_least(1, int), default=50)
    p.add_argument("--top-p", type=_fraction, default=None, help="in (0, 1]")
    p.add_argument("--max-tokens", type=_at_least(1, int), default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num", type=_at_least(1, int), default=1, help="samples per prompt (seeds SEED, SEED+1, ...)")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("export-hf", help="write a trained stage of a run as a Hugging Face model directory")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--stage", help="default: the last finished stage that trained a model")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="the new directory (config.json, model.safetensors, tokenizer); never overwritten")
    p.set_defaults(func=cmd_export_hf)
    p = sub.add_parser("schema", help="print the JSON Schema of every block kind")
    p.set_defaults(func=cmd_schema)
    # these two parse their own arguments (see their --help)
    p = sub.add_parser("graph", help="print the experiment graph, or a model's architecture graph (dot|mermaid)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_graph)
    p = sub.add_parser("import-hf", help="write the .lmspec of a local Hugging Face checkpoint", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_import_hf)
    return parser


_OWN_ARGUMENTS = {"graph": cmd_graph, "import-hf": cmd_import_hf}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _OWN_ARGUMENTS:  # subcommands that parse their own arguments
        return _OWN_ARGUMENTS[argv[0]](argparse.Namespace(rest=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("lmspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmspec check ... | head`: the reader left; that is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
