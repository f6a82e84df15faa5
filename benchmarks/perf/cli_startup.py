"""Measure `regionvlm --help` wall time (target: well under 2 s) against a bare `python -c pass`.

    python benchmarks/perf/cli_startup.py [--repeat 10]
"""

import argparse
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    python = timed([sys.executable, "-c", "pass"], args.repeat)
    helpt = timed([sys.executable, "-m", "regionvlm.cli", "--help"], args.repeat)
    torch_t = timed([sys.executable, "-c", "import torch"], max(2, args.repeat // 3))
    for name, t in [("python -c pass", python), ("regionvlm --help", helpt), ("python -c 'import torch'", torch_t)]:
        print(f"{name:28s} median {statistics.median(t) * 1000:7.1f} ms  (min {min(t) * 1000:.1f}, n={len(t)})")
    print(f"regionvlm --help / bare python: {statistics.median(helpt) / statistics.median(python):.2f}x; "
          f"target < 2000 ms: {'OK' if statistics.median(helpt) < 2 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
