"""harness fit's known answer: a fixed 32 MiB block; each step, --batch x 4 MiB in forward and
--batch x 2 MiB more in backward (so the peak is backward's, 6 MiB a unit of --batch), plus
--square^2 / 2 MiB in forward: a knob whose cost is not proportional to it."""

import argparse
import time

from harness import probe

MiB = 1 << 20
parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--square", type=int, default=0)
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

fixed = bytearray(b"\1") * (32 * MiB)  # repeated: every page written, so resident
for _ in probe.iterate(range(args.steps)):
    probe.phase("forward")
    act = bytearray(b"\1") * (args.batch * 4 * MiB + args.square * args.square * MiB // 2)
    time.sleep(0.06)  # held across sampler ticks
    probe.phase("backward")
    grad = bytearray(b"\1") * (args.batch * 2 * MiB)
    time.sleep(0.06)
    del act, grad
