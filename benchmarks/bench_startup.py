"""Start-up time of the `qrm` command line vs importing torch and transformers.

What is measured
    Wall-clock time of three fresh processes, run interleaved for N rounds (default 7) so that changes in
    machine load affect all alike:

    * ``qrm --help``: the console script next to this interpreter (`.venv/bin/qrm`), else
      ``python -m qrm_hf --help``;
    * ``qrm score --no-such-option``: an argument error, answered by argparse;
    * ``import torch, transformers``: ``python -c "import torch, transformers"``, the floor of any
      command that loads a model.

    The table reports the median (and min/max) of each over the rounds.

Target
    ``qrm --help`` and the argument error under 2 s, and faster than importing torch and transformers
    (they import neither).

Run alone with ``.venv/bin/python benchmarks/bench_startup.py [--rounds N]`` or with all benchmarks
through ``make bench``. The last line is ``RESULT ...`` for `run_all.py`.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS = 2.0


def commands() -> dict[str, list[str]]:
    script = Path(sys.executable).with_name("qrm")
    qrm = [str(script)] if script.exists() else [sys.executable, "-m", "qrm_hf"]
    return {
        "qrm --help": [*qrm, "--help"],
        "qrm score --no-such-option": [*qrm, "score", "--no-such-option"],
        "import torch, transformers": [sys.executable, "-c", "import torch, transformers"],
    }


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds after one warm-up")
    rounds = parser.parse_args().rounds
    measured = {name: [] for name in commands()}
    for command in commands().values():  # warm the file cache
        seconds(command)
    for round_number in range(rounds):
        order = list(commands().items())
        for name, command in order if round_number % 2 == 0 else reversed(order):
            measured[name].append(seconds(command))
    print(f"Start-up, wall-clock seconds, {rounds} interleaved rounds")
    print(f"{'command':<30} {'median':>8} {'min':>8} {'max':>8}")
    for name, times in measured.items():
        print(f"{name:<30} {statistics.median(times):8.2f} {min(times):8.2f} {max(times):8.2f}")
    help_time = statistics.median(measured["qrm --help"])
    error_time = statistics.median(measured["qrm score --no-such-option"])
    floor = statistics.median(measured["import torch, transformers"])
    verdict = "PASS" if max(help_time, error_time) < TARGET_SECONDS and help_time < floor else "FAIL"
    print(
        f"RESULT {verdict}: qrm --help {help_time:.2f} s, argument error {error_time:.2f} s, "
        f"import torch, transformers {floor:.2f} s (target < {TARGET_SECONDS:g} s)"
    )


if __name__ == "__main__":
    main()
