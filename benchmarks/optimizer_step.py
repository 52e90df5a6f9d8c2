"""One optimizer step over EfficientNet-B0's parameters: PyTorch's fused kernels against its per-tensor loop.

`effscale.train` builds AdamW and SGD with `fused=True` on CPU and CUDA. The alternatives step every
parameter tensor with its own small ops (`foreach=False`) or group them (`foreach=True`); B0 has a few
hundred tensors, most of them small, so per-tensor overhead is the step's cost. Gradients are random
and fixed; each side steps its own copy of the parameters, repetitions interleaved.

    .venv/bin/python benchmarks/optimizer_step.py                  # B0 at half width and depth (135 tensors)
    .venv/bin/python benchmarks/optimizer_step.py --full --optimizer sgd

Last line: fused / per-tensor step time (lower is better).
"""

from __future__ import annotations

import argparse

import _timing  # noqa: F401  (sets how OpenMP threads wait, before torch loads)
import torch
import yaml

from _timing import REPO, interleaved, log, median_ratio, pick_device, verdict
from effscale.models import build_model
from effscale.scaling import scaled_baseline


def parameters(full: bool, device: torch.device) -> list[torch.Tensor]:
    baseline = yaml.safe_load((REPO / "conf" / "baseline" / "efficientnet_b0.yaml").read_text())
    table = scaled_baseline(baseline, None if full else {"depth": 0.5, "width": 0.5})
    params = [p.detach().to(device) for p in build_model(table, 10).parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def optimizer(kind: str, params: list[torch.Tensor], **impl: bool) -> torch.optim.Optimizer:
    copies = [p.clone().requires_grad_() for p in params]
    for copy, p in zip(copies, params):
        copy.grad = p.grad.clone()
    if kind == "sgd":
        return torch.optim.SGD(copies, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-5, **impl)
    return torch.optim.AdamW(copies, lr=1e-3, weight_decay=0.05, **impl)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--full", action="store_true", help="B0 itself rather than at half width and depth")
    parser.add_argument("--steps", type=int, default=20, help="steps per repetition")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    params = parameters(args.full, device)
    sides = {"per-tensor": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    optimizers = {name: optimizer(args.optimizer, params, **impl) for name, impl in sides.items()}
    for opt in optimizers.values():
        opt.step()  # state allocated outside the clock

    def steps(opt: torch.optim.Optimizer):
        return lambda: [opt.step() for _ in range(args.steps)]

    times = interleaved({name: steps(opt) for name, opt in optimizers.items()}, args.repeats, device)
    log(f"  {args.optimizer} on {device}, {len(params)} tensors, {sum(p.numel() for p in params):,} parameters, "
        f"{torch.get_num_threads()} threads")
    for name, seconds in times.items():
        log(f"  {name:10s} {1000 * min(seconds) / args.steps:.2f} ms a step (best of {args.repeats})")
    verdict("fused/per-tensor step time", median_ratio(times["fused"], times["per-tensor"]), "<=", 1.0)


if __name__ == "__main__":
    main()
