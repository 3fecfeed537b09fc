"""Open a report.html in headless Chromium: fail on any console message, save a screenshot.

    apt-get install -y chromium          # Debian's package
    .venv/bin/python bench/headless_check.py reports/smoke/<run>/report/report.html

Chromium logs the page's console (errors, uncaught exceptions) on stderr as ``CONSOLE`` lines
when run with ``--enable-logging=stderr``; any such line fails the check. The screenshot goes to
bench/out/<run>-report.png, to look at.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="a report.html (or a flamegraph HTML)")
    parser.add_argument("--height", type=int, default=3000, help="window height in px (default 3000)")
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium on PATH (apt-get install -y chromium)")
    page = args.html.resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    shot = OUT / f"{page.parent.parent.name}-{page.stem}.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000", f"--screenshot={shot}",
             f"--window-size=1400,{args.height}", page.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    for line in console:
        print(line)
    print(f"{len(console)} console message(s); screenshot {shot}")
    return 1 if console or not shot.exists() else 0


if __name__ == "__main__":
    sys.exit(main())
