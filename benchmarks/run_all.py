"""Run every ``benchmarks/bench_*.py`` script in turn and summarise their results.

Each script runs in its own interpreter (so one benchmark's threads, caches and memory do not affect
the next), with progress bars turned off, prints its own table and ends with a line
``RESULT <summary>``; this runner repeats those lines at the end. New ``bench_*.py`` scripts join
automatically; the scripts in ``REGISTERED`` (quality studies such as ``ground_truth.py`` and
``label_noise.py``) run after them. ``make bench`` calls this file.

Exit status: 1 if a script crashed (or printed no RESULT line), else 0. A benchmark that misses its
target says FAIL in its result line but does not change the exit status: timings depend on the
machine and its load.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Scripts whose names do not start with bench_ (studies of quality, not speed), run after those.
REGISTERED = ("label_noise.py", "ground_truth.py")


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py")) + [HERE / name for name in REGISTERED]
    env = dict(os.environ)
    env.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the tables
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    results: list[tuple[str, str]] = []
    failed = False
    for script in scripts:
        print(f"=== {script.name} ===", flush=True)
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=HERE.parent,
            env=env,
        )
        lines = []
        for line in process.stdout:  # stream the script's output while keeping its RESULT lines
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        process.wait()
        elapsed = time.perf_counter() - start
        summary = [line.removeprefix("RESULT ") for line in lines if line.startswith("RESULT ")]
        if process.returncode != 0 or not summary:
            failed = True
            summary = [f"ERROR: exit status {process.returncode}" + ("" if summary else ", no RESULT line")]
        results.extend((script.name, line) for line in summary)
        print(f"({elapsed:.0f} s)\n", flush=True)

    print("=== summary ===")
    width = max((len(name) for name, _ in results), default=0)
    for name, line in results:
        print(f"{name:<{width}}  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
