"""A workload that leaves processes behind or ends abruptly: python lingering.py MODE PIDFILE.

MODE:
  quiet     start a child (same process group), write "MAIN CHILD" to PIDFILE, then sleep
            forever without a word (the stage only ends when something stops it);
  detached  start a grandchild in its own session that holds stdout, write its pid to PIDFILE,
            wait 1.5 s (the sampler sees it), then exit 0 leaving it behind;
  os_exit   print a line, then os._exit(3) (no Python shutdown, no stage_error event).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

mode, pidfile = sys.argv[1], Path(sys.argv[2])
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]

if mode == "quiet":
    child = subprocess.Popen(sleeper)
    pidfile.write_text(f"{os.getpid()} {child.pid}", encoding="utf-8")
    while True:
        time.sleep(1)
elif mode == "detached":
    grandchild = subprocess.Popen(sleeper, start_new_session=True)  # stdout: the stage's pipe
    pidfile.write_text(str(grandchild.pid), encoding="utf-8")
    time.sleep(1.5)
elif mode == "os_exit":
    print("the last line printed, not an error", flush=True)
    os._exit(3)
else:
    raise SystemExit(f"unknown mode {mode!r}")
