"""Where a memray window of training steps falls in a loop: planned by the probe, read back by the
analysis (which windows did not open)."""

from __future__ import annotations


def fit_window(start: int, steps: int, total: int | None) -> tuple[int, int] | None:
    """The window ``[start, start + steps)`` moved so that it fits a loop of ``total`` steps.

    A loop too short for the whole window gets one that ends with it, as many steps long as the
    window (or the loop) and starting no later than ``start``: the window opens in every loop
    that runs a step, and skips as many of its first steps as it can. ``total`` None (unknown):
    as configured. A loop of no steps gets none.
    """
    if total is None or total >= start + steps:
        return start, start + steps
    if total <= 0:
        return None
    first = max(0, min(start, total - steps))
    return first, first + steps
