"""Sandbox runs per second for a trivial program, against a plain unconfined
`python3 -I -S -c ...` subprocess measured in the same run.

    python benchmarks/bench_sandbox.py [--runs 50]
"""

import argparse
import subprocess
import sys
import time

from afm_trainer.tools.sandbox import run_python, sandbox_python

PROGRAM = "print(sum(range(1000)))"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    start = time.perf_counter()
    for _ in range(args.runs):
        assert run_python(PROGRAM).stdout == "499500\n"
    sandboxed = args.runs / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(args.runs):
        subprocess.run([sandbox_python(), "-I", "-S", "-c", PROGRAM], capture_output=True, check=True)
    plain = args.runs / (time.perf_counter() - start)
    print("| runner | runs/s |\n|---|---|")
    print(f"| sandbox (bubblewrap, own uid, memory cgroup) | {sandboxed:.1f} |\n| plain subprocess | {plain:.1f} |")
    print(f"sandbox overhead: {plain / sandboxed:.2f}x the time of an unconfined run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
