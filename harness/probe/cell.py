"""The probe cell: a few int64 slots in a shared file that the workload writes and the sampler reads.

Writing a slot is one aligned 8-byte store into a memory map: no syscall, no file or pipe write
per training step. The harness creates the file in the stage's directory (``probe.cell``,
``harness.layout.CELL_FILE``) and names that directory in the workload's environment
(``HARNESS_STAGE_DIR``, ``harness.layout.STAGE_DIR_ENV``); the workload's live probe maps the
file from there, and the sampler reads it at every tick to tag samples with epoch, step and phase
(and on CUDA the device bytes).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from harness.records.vocab import PHASES

MAGIC = 0x48524E53  # "HRNS"


class CellLayout(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_int64),
        ("pid", ctypes.c_int64),  # the workload's main process
        ("epoch", ctypes.c_int64),  # 1-based; 0 before the first epoch
        ("step", ctypes.c_int64),  # steps done in the current loop (training or evaluation)
        ("total", ctypes.c_int64),  # steps in the current loop, -1 when unknown
        ("phase", ctypes.c_int64),  # index into PHASES
        ("heartbeat", ctypes.c_int64),  # bumped at every step; tells a hung loop from a slow one
        ("cuda_allocated", ctypes.c_int64),  # device bytes, refreshed every few steps on CUDA
        ("cuda_reserved", ctypes.c_int64),
    ]


CELL_SIZE = ctypes.sizeof(CellLayout)


@dataclass(frozen=True)
class CellState:
    pid: int
    epoch: int
    step: int
    total: int
    phase: str
    heartbeat: int
    cuda_allocated: int
    cuda_reserved: int


def create(path: Path) -> None:
    """Create a zeroed cell file (the harness does this before starting a stage)."""
    path.write_bytes(b"\0" * mmap.PAGESIZE)


def open_cell(path: str | os.PathLike[str]) -> tuple[mmap.mmap, CellLayout]:
    """Map the cell file; the returned structure's fields read and write the shared bytes."""
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, mmap.PAGESIZE)
    finally:
        os.close(fd)
    return mm, CellLayout.from_buffer(mm)


class CellReader:
    """The sampler's side: read the cell without ever blocking the workload."""

    def __init__(self, path: Path) -> None:
        self._mm, self._cell = open_cell(path)

    def read(self) -> CellState | None:
        c = self._cell
        if c.magic != MAGIC:
            return None
        phase = c.phase
        return CellState(
            pid=c.pid,
            epoch=c.epoch,
            step=c.step,
            total=c.total,
            phase=PHASES[phase] if 0 <= phase < len(PHASES) else "idle",
            heartbeat=c.heartbeat,
            cuda_allocated=c.cuda_allocated,
            cuda_reserved=c.cuda_reserved,
        )

    def close(self) -> None:
        del self._cell
        self._mm.close()
