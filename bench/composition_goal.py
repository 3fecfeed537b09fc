"""The account's goal on a finished run (issue 24): unexplained <= 10 % of the main process's RSS.

    python bench/composition_goal.py RUN_DIR [RUN_DIR ...]

prints, for each stage's moments, each process's RSS, its parts (MiB) and the unexplained share;
the exit status is 1 when a main process's moment misses the goal. The figures in bench/RESULTS.md
come from the baseline (``harness run scenarios/cifar10-jpeg.yaml``) and the ResNet-18 user
script (``tests/workloads/resnet_user.py`` as a scenario's ``workload.entry``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.analysis.load import load_run
from harness.records.composition import PART_KEYS

MiB = 1024 * 1024
GOAL = 0.10
SHORT = {"file_torch": "torch", "file_cuda": "cuda", "file_python": "py.so", "file_data": "data",
         "tensor_parameters": "param", "tensor_gradients": "grad",
         "tensor_optimizer_state": "optim", "tensor_other": "t.other", "python_objects": "pyobj",
         "native_heap": "native", "malloc_free": "m.free", "stacks": "stacks",
         "instrument": "instr", "shared_memory": "shm", "unexplained": "unexpl"}


def main(argv: list[str]) -> int:
    worst = 0.0
    head = f"{'stage':8} {'when':6} {'ep':>3} {'step':>5} {'role':10} {'rss':>7} " + " ".join(
        f"{SHORT[k]:>7}" for k in PART_KEYS) + f" {'unexpl%':>8} {'took_s':>7}"
    for arg in argv:
        run = load_run(Path(arg))
        print(run.dir)
        print(head)
        for stage in run.stages:
            for st in [stage, *stage.ranks]:
                for m in st.composition:
                    for p in m.processes:
                        share = p.parts.unexplained / p.rss if p.rss else 0.0
                        if p.source == "inside":
                            worst = max(worst, abs(share))
                        parts = " ".join(f"{getattr(p.parts, k) / MiB:7.1f}" for k in PART_KEYS)
                        print(f"{st.name:8} {m.when:6} {m.epoch or 0:3} {m.step or 0:5} "
                              f"{p.role:10} {p.rss / MiB:7.1f} {parts} {100 * share:7.1f}% "
                              f"{p.took_s:7.3f}")
        for problem in run.problems:
            print("problem:", problem)
    print(f"largest |unexplained| of a main process: {100 * worst:.1f} % of its RSS "
          f"(goal <= {100 * GOAL:.0f} %)")
    return 0 if worst <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
