"""CUDA peak memory of a training step as a search measures it, against the steady state of a plain loop.

Under `budget.max_peak_mem_mb`, `effscale search` rejects a candidate whose training step does not fit:
`measure.cuda_peak_train_mb` takes two steps and reads the second's peak, which holds the optimizer's
state as every later step does. Here it is set beside the peak of steps 2–5 of a plain fp32, channels_last
loop over the same network, batch and optimizer. The measurement must never be under the steady state
(a candidate that fits by it would then run out of memory), and should not be far over it (a candidate
that fits would be rejected). CUDA only: on a CPU there is no device allocator to read, and a search uses
the shape estimate there.

    python benchmarks/peak_memory.py            # B0 at 224 px batch 64 (SGD, AdamW) and 64 px batch 256 (AdamW)
"""

from __future__ import annotations

import argparse

import _timing  # noqa: F401  (sets how OpenMP threads wait, before torch loads)
import torch

from _timing import describe_machine, log, pick_device, verdict
from effscale.measure import cuda_peak_train_mb
from effscale.models import build_model
from effscale.weights import baseline_table

CASES = [(224, 64, "sgd"), (224, 64, "adamw"), (64, 256, "adamw")]


def loop_peaks_mb(build, resolution: int, batch_size: int, optimizer: str, device: torch.device,
                  steps: int = 5) -> list[float]:
    """Peak allocated memory of each step of a plain training loop, over what was allocated before it."""
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    model = build().to(device).to(memory_format=torch.channels_last)
    opt = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-3))
    x = torch.randn(batch_size, 3, resolution, resolution, device=device).to(memory_format=torch.channels_last)
    peaks = []
    for _ in range(steps):
        torch.cuda.reset_peak_memory_stats(device)
        model(x).float().logsumexp(1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        peaks.append((torch.cuda.max_memory_allocated(device) - base) / 2**20)
    del model, opt, x
    torch.cuda.empty_cache()
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    if device.type != "cuda":
        log("peak memory: a CUDA device is needed (on a CPU a search uses the shape estimate); nothing measured")
        return
    log(describe_machine(device))

    def build():
        return build_model(baseline_table("efficientnet_b0"), num_classes=1000)

    ratios = []
    for resolution, batch_size, optimizer in CASES:
        measured = cuda_peak_train_mb(build, resolution, batch_size, device=str(device), optimizer=optimizer)
        peaks = loop_peaks_mb(build, resolution, batch_size, optimizer, device)
        steady = max(peaks[1:])
        ratios.append(measured / steady)
        log(f"B0 {resolution:3d} px batch {batch_size:3d} {optimizer:5s}: measured {measured:8.1f} MiB, loop steps "
            f"{', '.join(f'{p:.1f}' for p in peaks)} MiB: {measured / steady:.4f}")
    verdict("measured/steady-state peak memory, lowest", min(ratios), ">=", 1.0,
            note=f"(highest {max(ratios):.3f}, at most 1.05 wanted)", also=max(ratios) <= 1.05)


if __name__ == "__main__":
    main()
