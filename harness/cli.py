"""The ``harness`` command. ``main`` is the only place that turns an error into an exit code."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from harness import __version__
from harness.errors import HarnessError, SignalReceived

if TYPE_CHECKING:
    from harness.errors import RunFailed
    from harness.records.scenario import Scenario

# Treated like Ctrl-C: whatever runs is stopped and recorded, then exit 128 + the signal's number.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _add_scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", type=Path, help="scenario YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set train.epochs=1 (repeatable)",
    )
    p.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        help="where run directories go (default: reports/)",
    )
    p.add_argument("--quiet", action="store_true", help="do not echo the workload's output")


def _cmd_train(args: argparse.Namespace) -> int:
    """Run the scenario's stages bare: no sampler, no probe, no memray."""
    from harness.control import runner
    from harness.control.console import Console
    from harness.records import scenario

    sc = scenario.load(args.scenario, args.overrides)
    console = Console(sys.stdout, quiet=args.quiet)
    run_dir = runner.run_scenario(sc, args.reports, instrumented=False, console=console,
                                   source=str(args.scenario))
    with _late_stop_recorded(run_dir, sc):
        _out(f"harness: bare run finished: {run_dir}")
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    _add_scenario_args(p)
    p.add_argument("--no-report", action="store_true",
                   help="skip writing RUN_DIR/report/ at the end (harness report does it later)")


def _cmd_run(args: argparse.Namespace) -> int:
    """Run the scenario's stages under the harness and record memory by process, phase, epoch."""
    from harness.control import runner
    from harness.control.console import Console
    from harness.errors import RunFailed
    from harness.records import scenario

    sc = scenario.load(args.scenario, args.overrides)
    console = Console(sys.stdout, quiet=args.quiet)
    failure: RunFailed | None = None
    run_dir: Path | None
    try:
        run_dir = runner.run_scenario(sc, args.reports, instrumented=True, console=console,
                                       source=str(args.scenario))
    except RunFailed as exc:
        failure = exc
        run_dir = exc.run_dir
    with _late_stop_recorded(run_dir, sc):
        return _after_run(args, sc, run_dir, failure)


@contextlib.contextmanager
def _late_stop_recorded(run_dir: Path | None, sc: Scenario) -> Iterator[None]:
    """Ctrl-C, SIGTERM or SIGHUP after every stage ended ok (while the report is written, or
    after): the run's manifest says so, as the exit code will (docs/guarantees.md)."""
    from harness.control import runner

    try:
        yield
    except (KeyboardInterrupt, SignalReceived) as exc:
        if run_dir is not None:
            runner.record_late_stop(run_dir, sc, signal.SIGINT if isinstance(exc, KeyboardInterrupt)
                                    else exc.signum)
        raise


def _after_run(args: argparse.Namespace, sc: Scenario, run_dir: Path | None,
               failure: RunFailed | None) -> int:
    """What ``harness run`` does once its stages ended: the report, and its last line."""
    from harness.errors import Interrupted, StageInputError

    # A stopped run is left as it is; a run that stopped on bad input has nothing to report, and
    # its error is said once, by main.
    if isinstance(failure, (Interrupted, StageInputError)) or args.no_report or run_dir is None:
        if failure is not None:
            raise failure
        _out(f"harness: run finished: {run_dir}")
        return 0
    dist = sc.distributed
    if dist is not None and dist.node_rank > 0:  # one node's part: the report covers every node
        if failure is not None:
            raise failure
        _out(f"harness: node {dist.node_rank}'s run finished: {run_dir}; its report comes from "
             f"`harness merge` of every node's run directory")
        return 0
    # A failed run still gets a report of what was recorded, marked incomplete.
    from harness.report import build_report

    try:
        build_report(run_dir, on_summary=_print_now)  # the summary first, the files after
    except HarnessError as exc:
        _say(f"harness: warning: no report: {exc}")
    if failure is not None:
        raise failure
    _out(f"harness: run finished: {run_dir}")
    return 0


def _print_now(text: str) -> None:
    _out(text)


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory written by harness run")


def _cmd_report(args: argparse.Namespace) -> int:
    """Write RUN_DIR/report/ (report.html, summary.json, tables, timeline, flamegraphs) and summarize."""
    from harness.gate.runs import check_report_dir
    from harness.report import build_report

    check_report_dir(args.run_dir)
    build_report(args.run_dir, on_summary=_print_now)  # the summary first, the files after
    return 0


def _add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory written by harness run")
    p.add_argument("--baseline", type=Path, metavar="FILE",
                   help="a baseline file written by harness baseline")
    p.add_argument("--tolerance", default="10%",
                   help="how far above the baseline's mean a metric may go, '10%%' or 0.1; a "
                        "baseline of several runs widens it to their spread (default: 10%%)")
    p.add_argument("--slack", default=None, metavar="SIZE",
                   help="the least a baseline limit lies above the mean, e.g. '8 MiB' (default: "
                        "each metric's noise floor, docs/checks.md)")
    p.add_argument("--budgets", type=Path, default=None, metavar="SCENARIO",
                   help="take the budgets from this scenario file (default: the run's scenario.yaml)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="check a run whose records are damaged (a file cut short, a field of the "
                        "wrong type) on what could be read, instead of refusing it (exit 2)")
    p.add_argument("--any-baseline", action="store_true",
                   help="check against a baseline recorded from another scenario (default: "
                        "refused, exit 2)")
    _add_wide_arg(p)


def _add_wide_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wide", action="store_true",
                   help="every column, however wide (default: at most 100 columns; colour only on "
                        "a terminal and without NO_COLOR)")


def _cmd_check(args: argparse.Namespace) -> int:
    """Hold a run to its scenario's budgets and to a baseline; exit 1 on a regression."""
    from harness.errors import UsageError
    from harness.gate import check, metrics, runs
    from harness.gate import output as render
    from harness.sizes import SizeError, parse_size, parse_tolerance

    try:
        tolerance = parse_tolerance(args.tolerance)
        slack = None if args.slack is None else parse_size(args.slack)
    except SizeError as exc:
        raise UsageError(f"--tolerance/--slack: {exc}") from None
    summary = runs.summary(args.run_dir)
    # A run that failed is a failed check (exit 1, below); damaged records of a run that says it
    # finished well cannot be trusted either way: bad input.
    damaged = runs.refuse_damage(args.run_dir, summary, "--allow-incomplete checks it on what "
                                 "could be read", args.allow_incomplete)
    for reason in damaged:
        _out(f"harness: warning: incomplete record: {reason}")
    budgets = (runs.budgets_from(args.budgets) if args.budgets
               else runs.run_scenario(args.run_dir).budgets)
    base = runs.read_baseline(args.baseline) if args.baseline else None
    if base is not None and not args.any_baseline:
        check.same_scenario(base, summary.run.scenario, str(args.run_dir))
    if not check.budget_limits(budgets) and base is None:
        raise UsageError(f"{args.run_dir}: nothing to check: the scenario has no budgets and no "
                         "--baseline was given")
    result = check.check(metrics.from_summary(summary), budgets=budgets, baseline=base,
                         tolerance=tolerance, slack=slack, run_status=summary.run.status)
    title = f"harness: check {args.run_dir}"
    if base is not None:
        title += (f"\n  against {args.baseline} ({base.scenario}, {len(base.runs)} run(s), "
                  f"tolerance {args.tolerance})")
    print(render.check_text(result, title, wide=args.wide, color=render.use_color(sys.stdout)))
    return result.exit_code


def _add_baseline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                   help="one or more run directories of the same scenario")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                   help="the baseline file to write (JSON)")


def _cmd_baseline(args: argparse.Namespace) -> int:
    """Record a baseline (every metric of each run, with provenance) from one or more runs."""
    from harness.gate import runs

    doc = runs.write_baseline(args.run_dirs, args.output)
    _out(f"harness: baseline of {doc['scenario']!r}: {len(doc['metrics'])} metrics over "
         f"{len(doc['runs'])} run(s) written to {args.output}")
    return 0


def _add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="the run compared against (before)")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="the run compared (after)")
    p.add_argument("--html", type=Path, default=None, metavar="FILE",
                   help="where the HTML page goes (default: REPORTS/compare/<A>-vs-<B>.html)")
    p.add_argument("--reports", type=Path, default=Path("reports"),
                   help="where the comparison page goes unless --html says (default: reports/)")
    p.add_argument("--top", type=int, default=10, help="allocation sites listed (default: 10)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="compare a run whose records are damaged, on what could be read")
    _add_wide_arg(p)


def _cmd_compare(args: argparse.Namespace) -> int:
    """Two runs side by side by phase, epoch and process, and the allocation sites that grew."""
    from harness.gate import compare, runs
    from harness.gate import output as render

    sa, sb = runs.summary(args.run_a), runs.summary(args.run_b)
    for run_dir, doc in ((args.run_a, sa), (args.run_b, sb)):
        for reason in runs.refuse_damage(run_dir, doc, "--allow-incomplete compares it on what "
                                         "could be read", args.allow_incomplete):
            print(f"harness: warning: incomplete record: {reason}")
    result = compare.compare(sa, sb, runs.processes(args.run_a), runs.processes(args.run_b),
                             runs.sites(args.run_a), runs.sites(args.run_b), args.top,
                             manifests=(runs.manifest(args.run_a), runs.manifest(args.run_b)))
    out = args.html or args.reports / "compare" / f"{args.run_a.name}-vs-{args.run_b.name}.html"
    runs.write_text(out, render.compare_html(result))
    print(render.compare_text(result, wide=args.wide, color=render.use_color(sys.stdout)))
    _out(f"\nharness: comparison page {out}")
    return 0


def _add_merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="DIR",
                   help="each node's run directory (harness run with distributed.node_rank K)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="OUT",
                   help="the joined run directory (default: node 0's directory name + '-merged', beside it)")


def _cmd_merge(args: argparse.Namespace) -> int:
    """Join the run directories of a several-node job's nodes into one, and write its report."""
    from harness.control.merge import merge
    from harness.report import build_report

    out = merge(args.run_dirs, args.output)
    _out(f"harness: merged {len(args.run_dirs)} nodes into {out}")
    _out(build_report(out).text)
    return 0


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    _add_scenario_args(p)
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a knob and its values, e.g. --vary train.batch_size=4,16,64, or a script's "
                        "own argument in workload.args, e.g. --vary --batch=8,16 (repeatable: "
                        "the grid is every combination)")


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Run a scenario over a grid of settings; tabulate and plot peak memory by process role."""
    from harness.gate import output as render
    from harness.gate import runs

    result = runs.sweep(args.scenario, args.vary, args.overrides, args.reports, args.quiet)
    print(render.sweep_text(result))
    _out(f"harness: sweep table {result.files['csv']}, plot {result.files['png']}")
    failed = (result.table["status"] != "ok").sum()
    return 1 if failed else 0


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    from harness.gate.fit import DEFAULT_METRIC, METRICS

    _add_scenario_args(p)
    p.add_argument("--budget", required=True, metavar="SIZE",
                   help="the memory to stay under, e.g. 2GiB or '1.5 GB'")
    p.add_argument("--knob", default="train.batch_size", metavar="KEY",
                   help="a scalar scenario key, or a script's own argument in workload.args "
                        "(--knob --batch) (default: train.batch_size)")
    p.add_argument("--metric", default=DEFAULT_METRIC, choices=METRICS, metavar="M",
                   help=f"the peak held to the budget: {', '.join(METRICS)} (default: "
                        f"{DEFAULT_METRIC}, the host footprint)")
    p.add_argument("--steps", type=int, default=30, metavar="N",
                   help="train.max_steps of each run (default: 30); a script bounds its own")
    p.add_argument("--values", metavar="V1,V2[,V3]",
                   help="the values to fit at (default: the scenario's, 4 times it, then one "
                        "between there and where the first two runs' line meets the budget)")
    p.add_argument("--min", type=float, default=None, dest="lo",
                   help="the smallest value to consider (default: 1 for an integer knob, else 0)")
    p.add_argument("--max", type=float, default=None, dest="hi",
                   help="the largest value to consider (default: none; for the built-in workload's "
                        "train.batch_size, its smallest split's size)")


def _cmd_fit(args: argparse.Namespace) -> int:
    """Find the largest value of a knob whose peak memory stays under a budget, and verify it."""
    from harness.errors import UsageError
    from harness.gate import output as render
    from harness.gate import runs
    from harness.gate.sweep import split_values
    from harness.sizes import parse_size

    try:
        budget = parse_size(args.budget)
    except ValueError as exc:
        raise UsageError(f"--budget {args.budget}: {exc}") from None
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps}: expected a positive number of steps")
    values = split_values(args.values) if args.values is not None else None
    result = runs.fit(args.scenario, args.knob, budget, args.metric, args.overrides, args.reports,
                      steps=args.steps, values=values, lo=args.lo, hi=args.hi, quiet=args.quiet)
    print(render.fit_text(result))
    _out(f"harness: fit report {result.files['html']}, {result.files['json']}")
    return 0 if result.ok else 1


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory")
    p.add_argument("--tensorboard", type=Path, required=True, metavar="LOGDIR",
                   help="write the memory series as TensorBoard scalars into one event file in "
                        "LOGDIR (the training's own log folder, so memory sits beside the loss)")


def _cmd_export(args: argparse.Namespace) -> int:
    """Export a run's memory series: TensorBoard scalars on the training-step axis."""
    from harness.render import tensorboard

    written = tensorboard.export(args.run_dir, args.tensorboard)
    _out(f"harness: {written.scalars} points in {written.tags} series written to {written.file}")
    return 0


COMMANDS = {
    "run": (_cmd_run, _add_run_args),
    "train": (_cmd_train, _add_scenario_args),
    "report": (_cmd_report, _add_report_args),
    "check": (_cmd_check, _add_check_args),
    "baseline": (_cmd_baseline, _add_baseline_args),
    "compare": (_cmd_compare, _add_compare_args),
    "sweep": (_cmd_sweep, _add_sweep_args),
    "fit": (_cmd_fit, _add_fit_args),
    "export": (_cmd_export, _add_export_args),
    "merge": (_cmd_merge, _add_merge_args),
}


class _Parser(argparse.ArgumentParser):
    """argparse, its one-line errors showing the arguments they quote escaped (an argument may
    hold anything a shell can pass)."""

    def error(self, message: str) -> NoReturn:
        from harness.records.text import printable

        super().error(printable(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harness",
        description="Where does a PyTorch training run's memory go: by process, phase and epoch.",
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=func.__doc__, description=func.__doc__)
        add_args(p)
        p.set_defaults(func=func)
    return parser


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SignalReceived in the main thread, as SIGINT raises
    KeyboardInterrupt, so that every command stops what it started and says so.

    Only the first one raises: a second must not cut short the clean-up the first began. The
    previous handlers come back on the way out (``main`` also runs inside other programs).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise SignalReceived(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _out(text: str) -> None:
    """A line (or lines) of the harness's own on stdout; names and paths shown escaped."""
    from harness.records.text import printable_lines

    print(printable_lines(text), flush=True)


def _say(text: str) -> None:
    from harness.records.text import printable  # one line, whatever the message holds

    try:
        print(printable(text), file=sys.stderr)
    except OSError:  # after SIGHUP the terminal may be gone; the exit code still tells
        pass


# Options whose value may itself begin with a dash: a script's own argument (``--vary --batch=8,16``,
# ``--knob --batch``), which argparse would otherwise take for an option of ours.
DASH_VALUED = ("--vary", "--knob")


def _join_dash_values(argv: list[str]) -> list[str]:
    """``--vary --batch=8,16`` -> ``--vary=--batch=8,16`` (as argparse reads it unambiguously)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in DASH_VALUED and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and argv[i + 1] != "--" and len(argv[i + 1]) > 1:
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(_join_dash_values(argv))
    with _stop_signals_raise():
        try:
            return int(args.func(args))
        except HarnessError as exc:
            _say(f"harness: error: {exc}")
            return exc.exit_code
        except KeyboardInterrupt:
            _say("harness: interrupted")
            return 130
        except SignalReceived as exc:
            _say(f"harness: terminated by {exc.name}")
            return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
