"""The stage process: ``python -m harness.probe.stage RUN_DIR STAGE``.

``harness run`` and ``harness train`` both start a stage this way; under ``harness run`` the
environment names the stage directory and the live probe is switched on before the workload is
imported, so a full memray capture sees the imports too.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from harness import probe
from harness.errors import HarnessError
from harness.layout import SCENARIO_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.probe.stage")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("stage")
    args = parser.parse_args(argv)

    probe.activate_from_env()
    error: BaseException | None = None
    code = 0
    try:
        from harness.control import scenario as scenario_mod
        from harness.probe.workload import StageContext, run_stage

        scenario = scenario_mod.load(args.run_dir / SCENARIO_FILE)
        os.environ.setdefault("HARNESS_STAGE", args.stage)
        run_stage(StageContext(stage=args.stage, scenario=scenario, run_dir=args.run_dir))
    except HarnessError as exc:
        error, code = exc, exc.exit_code
        print(f"harness: {exc}", file=sys.stderr)
    except SystemExit as exc:  # a script calling sys.exit()
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code:
            error = exc
    except BaseException as exc:  # the workload's own failure: keep its traceback in the log
        error, code = exc, 1
        traceback.print_exc()
    if error is not None and probe.enabled():
        _record_error(args.stage, error)
    probe.deactivate(failed=error is not None)
    sys.stdout.flush()
    return code


def _record_error(stage: str, error: BaseException) -> None:
    message = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, SystemExit):
        message = f"exit code {message}" if isinstance(error.code, int) else message
    probe.record("stage_error", stage=stage, error=type(error).__name__, message=message)


if __name__ == "__main__":
    sys.exit(main())
