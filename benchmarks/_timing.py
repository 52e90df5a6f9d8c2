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


def recipe_optimizer(model: torch.nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """The optimizer a trial of `recipe` trains with (train.Classifier), for a plain loop: SGD with
    Nesterov momentum or AdamW, fused kernels, weight decay on conv and linear weights only."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": float(recipe["weight_decay"])}, {"params": rest, "weight_decay": 0.0}]
    if recipe.get("optimizer", "sgd") == "sgd":
        return torch.optim.SGD(groups, lr=float(recipe["lr"]), momentum=float(recipe["momentum"]),
                               nesterov=bool(recipe["nesterov"]), fused=True)
    return torch.optim.AdamW(groups, lr=float(recipe["lr"]), fused=True)


class RecipePrecision:
    """A trial's precision (`trainer.precision`, auto: bf16-mixed, 16-mixed or 32-true) as Lightning
    runs it, for a plain loop: `with p.autocast():` around the forward pass, `p.step(loss, opt)` after it
    (fp16 scales the loss; the others step as usual)."""

    def __init__(self, device: torch.device, recipe: dict) -> None:
        from effscale.train import _precision

        self.name = _precision(str(device), str(recipe.get("precision", "auto")))
        if self.name not in ("32-true", "bf16-mixed", "16-mixed"):
            raise SystemExit(f"a plain loop here runs 32-true, bf16-mixed or 16-mixed, not {self.name}")
        self.device = device
        self.half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.name)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.name == "16-mixed")

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.half or torch.bfloat16, enabled=self.half is not None)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()


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
