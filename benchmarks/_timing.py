"""What every benchmark here shares: device choice, synchronised timing, interleaved A/B runs, the verdict line.

The machines these run on are noisy (shared CPUs, other jobs): a ratio is measured by running the two
sides in the same process, alternating repetitions, and taking the median of the per-repetition ratios;
absolute times are printed for reading, never compared to a threshold.
"""

from __future__ import annotations

import os

# OpenMP threads wait as under the `effscale` command, which sets that on import (effscale/cli.py), so that
# a benchmark measures what a user's run gets. Before torch loads its OpenMP runtime; a user's setting wins.
import effscale.cli  # noqa: E402, F401

import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# The real Fashion-MNIST files: $EFFSCALE_FASHION_MNIST (as for the tests), else ../shared/data beside the repository.
FASHION_MNIST = Path(os.environ.get("EFFSCALE_FASHION_MNIST", REPO.parent / "shared" / "data" / "fashion-mnist"))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of fn(), with the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Time each callable `repeats` times, alternating between them (A B C A B C …), so drifting load
    hits every side alike. Returns the seconds of every repetition per name."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repetitions of numerator[i] / denominator[i] (pairs taken side by side)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores, torch {torch.__version__}"


def verdict(label: str, value: float, op: str, target: float, note: str = "", also: bool = True) -> bool:
    """Print the benchmark's last line, e.g. `ratio ours/torchvision throughput: 1.03 (target >= 1.0) PASS`.
    `also` is a further condition the PASS needs (named in `note`)."""
    ok = (value >= target if op == ">=" else value <= target) and also
    extra = f" {note}" if note else ""
    print(f"ratio {label}: {value:.2f} (target {op} {target}) {'PASS' if ok else 'FAIL'}{extra}", flush=True)
    return ok


def log(*args: object) -> None:
    print(*args, flush=True)
