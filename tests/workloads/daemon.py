"""A workload that starts a daemon the classic way and leaves it running: python daemon.py PIDFILE.

It forks; the child calls setsid() and forks again, and exits at once, reaped by the workload; the
grandchild, a daemon in a session of its own whose parent is gone, execs a sleeper. Its pid goes to
PIDFILE. The workload then runs on for 1.5 s (the sampler sees the tree) and exits 0.
"""

from __future__ import annotations

import os
import sys
import time

pidfile = sys.argv[1]
child = os.fork()
if child == 0:
    os.setsid()
    daemon = os.fork()
    if daemon == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pidfile + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(str(daemon))
    os.replace(pidfile + ".tmp", pidfile)
    os._exit(0)
os.waitpid(child, 0)
time.sleep(1.5)
