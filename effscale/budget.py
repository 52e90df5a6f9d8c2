"""The budget a search or comparison keeps its candidates under (paper section 3.1, eq. 2: the model's
memory and FLOPs bounded by the target hardware's): bounds on parameters, peak training memory and
latency, checked against each candidate's measured cost before any training. The MACs-ratio bound,
which depends on φ, is judged where the candidates are (`search.judge`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from effscale.errors import UserError

if TYPE_CHECKING:
    from effscale.measure import Measurement

DEVICE_COSTS = ("latency_ms", "peak_mem_mb")  # measured on a device: recorded once per sweep
DEVICE_BOUNDS = tuple(f"max_{k}" for k in DEVICE_COSTS)


def check_baseline_budget(base: Measurement, budget: dict[str, Any]) -> None:
    """A budget the unscaled baseline already breaks can admit nothing: say so before any work."""
    for key, value, unit in budget_terms(base, budget):
        if math.isinf(value):  # measure.cuda_peak_train_mb
            raise UserError(f"budget.{key}={budget[key]}: the baseline's own training step runs out of the device's "
                            "memory, so no candidate fits; lower data.batch_size")
        if value > budget[key]:
            raise UserError(f"budget.{key}={budget[key]} is below the baseline's own {value:,} {unit}")


def over_budget(cost: Measurement, budget: dict[str, Any]) -> list[str]:
    """Why a measured cost breaks the bounds that are set on params, peak memory and latency (none: it fits)."""
    reasons = []
    for key, value, unit in budget_terms(cost, budget):
        if math.isinf(value):  # measure.cuda_peak_train_mb: the step ran out of the device's memory
            reasons.append(f"out of device memory, budget.{key}={_number(budget[key])}")
        elif value > budget[key]:
            reasons.append(f"{_number(value)} {unit} > budget.{key}={_number(budget[key])}")
    return reasons


def bounds_device_costs(budget: dict[str, Any]) -> bool:
    """Whether the budget bounds a cost measured on a device (latency, peak memory)."""
    return any(budget.get(k) is not None for k in DEVICE_BOUNDS)


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.1f}"


def budget_terms(cost: Measurement, budget: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(budget key, the cost's value, its unit) for each bound that is set and the cost has measured."""
    terms = [("max_params", cost.params, "params"), ("max_peak_mem_mb", cost.peak_mem_mb, "MB peak memory"),
             ("max_latency_ms", cost.latency_ms, "ms latency")]
    return [(key, value, unit) for key, value, unit in terms if budget.get(key) is not None and value is not None]


def measure_options(cfg: dict[str, Any], device: str, in_channels: int) -> dict[str, Any]:
    """How a search measures its candidates (`measure.measure_table` keywords): at the sweep's batch
    size, and on the device only for what a budget bounds. Latency is timed only under
    `budget.max_latency_ms`; peak memory is a real training step on CUDA only under
    `budget.max_peak_mem_mb`, and otherwise the shape estimate (milliseconds, not a CUDA step per model)."""
    budget = cfg.get("budget") or {}
    return dict(in_channels=in_channels, batch_size=int(cfg["data"]["batch_size"]), device=device,
                latency=budget.get("max_latency_ms") is not None,
                peak_on_device=budget.get("max_peak_mem_mb") is not None,
                optimizer=(cfg.get("trainer") or {}).get("optimizer", "sgd"))
