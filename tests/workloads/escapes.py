"""A workload whose every name and message carries terminal escape sequences (issue 23).

A metric named with ESC in it, then a RuntimeError whose message recolours the
terminal (CSI), retitles its window (OSC ... BEL) and rings the bell.
"""

from harness import probe

EVIL = "\x1b[31mRED\x1b]0;TITLE\x07"

with probe.epoch(1):
    for _ in probe.iterate(range(3)):
        probe.phase("forward")
probe.metric("loss" + EVIL, 1.0)
raise RuntimeError("bad" + EVIL)
