"""A distributed stage's process: ``python -m harness.control.agent RUN_DIR STAGE``.

``harness run`` and ``harness train`` start a stage with a ``distributed:`` section this way
instead of as :mod:`harness.probe.stage`: this process becomes torchrun's agent
(:func:`harness.control.distributed.run_agent`), with no probe of its own, and starts each rank as
``python -m harness.probe.stage RUN_DIR STAGE --rank``. Like a stage, it stops its whole process
group when the harness that started it is gone (``--watch-fd``).
"""

from __future__ import annotations

import sys

from harness.control import distributed
from harness.errors import HarnessError, ScenarioError
from harness.layout import SCENARIO_FILE
from harness.probe.stage import become_subreaper, log_error, stage_parser, watch_harness
from harness.records import scenario as scenario_mod


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("harness.control.agent").parse_args(argv)
    if args.watch_fd is not None:
        watch_harness(args.watch_fd)
    become_subreaper()  # a rank's orphans stay in the tree the harness samples
    run_dir, stage = args.run_dir, args.stage
    try:
        scenario = scenario_mod.load(run_dir / SCENARIO_FILE)
        if scenario.distributed is None:
            raise ScenarioError(f"{run_dir / SCENARIO_FILE}: the scenario has no distributed section")
        record_dir = distributed.node_dir(run_dir, stage, scenario.distributed)
        record_dir.mkdir(parents=True, exist_ok=True)
        code = distributed.run_agent(run_dir, stage, scenario, record_dir)
    except HarnessError as exc:
        log_error(run_dir, stage, exc)
        return exc.exit_code
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
