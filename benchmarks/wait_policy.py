"""How OpenMP's idle threads wait, on an idle CPU and on an oversubscribed one: a training step under each setting.

Between two parallel operations PyTorch's OpenMP threads wait, spinning or asleep. Spinning wakes
fastest; asleep frees the core for others. A training step of a small network at the 12-36 px a CPU
search trains at is thousands of short operations, so the wait decides much of its time; and when
several processes share the cores (other jobs, two searches, a test suite), spinning threads take
the cores from the threads with work. `effscale` sets GOMP_SPINCOUNT=3000 (spin for a few
microseconds, then sleep) unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set; this script measures it
against OpenMP's default (spin for up to 300,000 iterations) and OMP_WAIT_POLICY=PASSIVE (sleep at
once), with 1 process, and with `--crowd` processes at once using every core each.

Each setting runs in fresh processes (the runtime reads the variables when torch loads). Within a
crowd, all processes train first and then time the same 15-second window; the median step is taken.

    .venv/bin/python benchmarks/wait_policy.py            # ~3 minutes
    .venv/bin/python benchmarks/wait_policy.py --full --resolution 32

Last line: PASSIVE / effscale's setting, median step time on the idle CPU (higher: effscale's is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"OpenMP default": {}, "effscale (GOMP_SPINCOUNT=3000)": {"GOMP_SPINCOUNT": "3000"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def train(resolution: int, full: bool, start_at: float, window: float) -> None:
    """Child: train B0 (half width and depth unless `full`) on one random batch of 128 until
    `start_at`, then print the median step time (ms) over the next `window` seconds."""
    import torch  # first, under the variables this process was given (not _timing's defaults)
    import yaml

    from effscale.models import build_model
    from effscale.scaling import scaled_baseline

    baseline = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "baseline" /
                               "efficientnet_b0.yaml").read_text())
    model = build_model(scaled_baseline(baseline, None if full else {"depth": 0.5, "width": 0.5}), 10, 1)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(128, 1, resolution, resolution).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    while time.time() < start_at:
        step()
    steps = []
    while time.time() < start_at + window:
        started = time.perf_counter()
        step()
        steps.append(time.perf_counter() - started)
    print(f"{1000 * statistics.median(steps):.1f}")


def crowd(setting: dict[str, str], processes: int, args: argparse.Namespace) -> list[float]:
    """Median step (ms) of each of `processes` processes training at once under `setting`."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | setting
    start_at = time.time() + args.warmup
    command = [sys.executable, __file__, "--child", str(start_at), "--resolution", str(args.resolution),
               "--window", str(args.window), *(["--full"] if args.full else [])]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=13)
    parser.add_argument("--full", action="store_true", help="B0 itself rather than at half width and depth")
    parser.add_argument("--crowd", type=int, default=3, help="processes at once in the oversubscribed run")
    parser.add_argument("--window", type=float, default=15.0, help="seconds timed")
    parser.add_argument("--warmup", type=float, default=12.0, help="seconds before the window (imports, warm-up)")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return train(args.resolution, args.full, args.child, args.window)
    from _timing import log, verdict

    log(f"  B0{'' if args.full else ' at half width and depth'}, {args.resolution} px, batch 128, "
        f"{os.cpu_count()} cores; median step in ms")
    idle = {}
    for name, setting in SETTINGS.items():
        idle[name] = crowd(setting, 1, args)[0]
        crowded = crowd(setting, args.crowd, args)
        log(f"  {name:32s} alone {idle[name]:7.1f}   {args.crowd} at once "
            + " ".join(f"{ms:7.1f}" for ms in crowded))
    ours, passive = idle["effscale (GOMP_SPINCOUNT=3000)"], idle["OMP_WAIT_POLICY=PASSIVE"]
    verdict("PASSIVE/effscale step time, idle CPU", passive / ours, ">=", 1.0)


if __name__ == "__main__":
    main()
