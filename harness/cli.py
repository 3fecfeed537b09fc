"""The ``harness`` command. ``main`` is the only place that turns an error into an exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import __version__
from harness.errors import HarnessError


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
    from harness import runner, scenario

    sc = scenario.load(args.scenario, args.overrides)
    console = runner.Console(sys.stdout, quiet=args.quiet)
    run_dir = runner.run_scenario(sc, args.reports, instrumented=False, console=console)
    print(f"harness: bare run finished: {run_dir}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Run the scenario's stages under the harness and record memory by process, phase, epoch."""
    from harness import runner, scenario

    sc = scenario.load(args.scenario, args.overrides)
    console = runner.Console(sys.stdout, quiet=args.quiet)
    run_dir = runner.run_scenario(sc, args.reports, instrumented=True, console=console)
    print(f"harness: run finished: {run_dir}")
    return 0


COMMANDS = {
    "run": (_cmd_run, _add_scenario_args),
    "train": (_cmd_train, _add_scenario_args),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
