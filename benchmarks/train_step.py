"""Training step of effscale's EfficientNet-B0 against torchvision's efficientnet_b0.

Same batch, same SGD step (momentum 0.9, cross-entropy), both channels_last, same threads, in one
process with the repetitions interleaved. Also reports, for effscale's B0, the channels_last speed-up
over contiguous (NCHW) tensors, and with --compile what torch.compile costs (compile seconds) and
buys (steady-state step time).

    .venv/bin/python benchmarks/train_step.py            # ~2 minutes on 2 CPU cores
    .venv/bin/python benchmarks/train_step.py --quick    # seconds
    .venv/bin/python benchmarks/train_step.py --compile  # adds torch.compile (minutes: compiling on a CPU is slow)

Last line: the lowest ours/torchvision throughput ratio over the resolutions measured.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _timing  # noqa: F401  (sets how OpenMP threads wait, before torch loads)
import torch
import torchvision
import yaml
from torch import nn

from _timing import REPO, describe_machine, interleaved, log, median_ratio, pick_device, sync, timed, verdict
from effscale.models import build_model
from effscale.scaling import scaled_baseline

NUM_CLASSES = 10


def effscale_b0() -> nn.Module:
    table = yaml.safe_load((REPO / "conf" / "baseline" / "efficientnet_b0.yaml").read_text())
    return build_model(scaled_baseline(table), NUM_CLASSES)


def torchvision_b0() -> nn.Module:
    return torchvision.models.efficientnet_b0(num_classes=NUM_CLASSES)


def train_step(build, resolution: int, batch: int, device: torch.device, channels_last: bool, compile: bool = False):
    """A closure doing one SGD step of a fresh model on one fixed random batch."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build().to(device).train().to(memory_format=fmt)
    x = torch.randn(batch, 3, resolution, resolution, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compile else model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()

    return step


def steps(step, n: int):
    return lambda: [step() for _ in range(n)]


def compare_at(resolution: int, args, device: torch.device) -> float:
    runs = {
        "effscale channels_last": train_step(effscale_b0, resolution, args.batch, device, True),
        "torchvision channels_last": train_step(torchvision_b0, resolution, args.batch, device, True),
        "effscale contiguous": train_step(effscale_b0, resolution, args.batch, device, False),
    }
    for step in runs.values():  # warm-up: allocator, oneDNN primitive caches
        step()
        step()
    times = interleaved({k: steps(v, args.steps) for k, v in runs.items()}, args.repeats, device)
    for name, t in times.items():
        ms = statistics.median(t) / args.steps * 1e3
        log(f"  {resolution:>3d} px  {name:<26s} {ms:8.1f} ms/step  {args.batch / ms * 1e3:8.0f} img/s")
    ratio = median_ratio(times["torchvision channels_last"], times["effscale channels_last"])
    cl_speedup = median_ratio(times["effscale contiguous"], times["effscale channels_last"])
    log(f"  {resolution:>3d} px  ours/torchvision throughput {ratio:.2f}x; "
        f"channels_last over contiguous (ours) {cl_speedup:.2f}x")
    return ratio


def compile_cost(resolution: int, args, device: torch.device) -> None:
    """Seconds torch.compile adds to the first step, steady-state speed-up, and steps to break even."""
    eager = train_step(effscale_b0, resolution, args.batch, device, True)
    compiled = train_step(effscale_b0, resolution, args.batch, device, True, compile=True)
    eager()
    eager_first = timed(eager, device)
    first = timed(compiled, device)
    compiled()
    times = interleaved({"eager": steps(eager, args.steps), "compiled": steps(compiled, args.steps)},
                        args.repeats, device)
    eager_ms = statistics.median(times["eager"]) / args.steps * 1e3
    compiled_ms = statistics.median(times["compiled"]) / args.steps * 1e3
    speedup = median_ratio(times["eager"], times["compiled"])
    compile_s = first - eager_first
    saved_ms = eager_ms - compiled_ms
    break_even = f"{compile_s * 1e3 / saved_ms:,.0f} steps" if saved_ms > 0 else "never"
    log(f"  {resolution:>3d} px  torch.compile: {compile_s:.0f} s to compile; eager {eager_ms:.1f} ms/step, "
        f"compiled {compiled_ms:.1f} ms/step ({speedup:.2f}x); pays for itself after {break_even}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repetitions per configuration")
    parser.add_argument("--steps", type=int, default=2, help="training steps per repetition")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 px, batch 16, 2 repetitions")
    args = parser.parse_args()
    if args.quick:
        args.resolutions, args.batch, args.repeats, args.steps = [32], 16, 2, 1
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    log(f"train step, batch {args.batch}, SGD, {describe_machine(device)}")
    start = time.perf_counter()
    ratios = [compare_at(r, args, device) for r in args.resolutions]
    if args.compile:
        compile_cost(args.resolutions[0], args, device)
    sync(device)
    log(f"  ({time.perf_counter() - start:.0f} s)")
    verdict("ours/torchvision throughput", min(ratios), ">=", 1.0)


if __name__ == "__main__":
    main()
