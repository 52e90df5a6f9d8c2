"""`effscale compare`: compound scaling against one dimension at a time, at matched MACs.

Paper section 3.3 / table 3 / fig. 8: scale the baseline by compound coefficients α, β, γ at each φ,
then scale it by width alone, depth alone and resolution alone (and any pycls-style weighting such as
'd1_w8_r1') to the *same* cost, train every model with the same recipe and seeds, and compare.

"The same cost" is the compound model's *measured* MACs, not the analytic 2^φ: channels round to
multiples of 8, repeats to whole layers and inputs to whole pixels, so d·w²·r² is only a guess. Each
other strategy's FLOPs multiplier is solved numerically (bisection on the measured MACs, counted on
the meta device in a fraction of a second) until its MACs land within `compare.macs_tolerance`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from effscale.scaling import Multipliers, compound_multipliers, scale_stage_table, strategy_multipliers

SINGLE_DIMENSIONS = ("width", "depth", "resolution")


def solve_multiplier(ratio_at: Callable[[float], float], target: float, tolerance: float,
                     max_steps: int = 40) -> tuple[float, float]:
    """The FLOPs multiplier s ≥ 1 whose measured MACs ratio `ratio_at(s)` is nearest `target`.

    `ratio_at` is a non-decreasing step function (every dimension rounds to integers), so bisect in
    log space from the analytic guess s = target, stopping as soon as a ratio lands within `tolerance`
    (relative) or the bracket closes on one step edge. Returns (s, its ratio); when no step of the
    function falls within the tolerance, the nearest one on either side of the target.
    """
    if target <= 1:
        return 1.0, ratio_at(1.0)
    seen: dict[float, float] = {}

    def at(s: float) -> float:
        seen[s] = ratio_at(s)
        return seen[s]

    def close_enough() -> bool:
        return any(abs(r / target - 1) <= tolerance for r in seen.values())

    lo, hi = 1.0, target
    if at(hi) < target:
        lo = hi
        while at(hi := hi * 2) < target:
            if hi > 1e4 * target:
                break
            lo = hi
    for _ in range(max_steps):
        if close_enough() or hi / lo < 1 + 1e-6:
            break
        mid = math.sqrt(lo * hi)
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
    s = min(seen, key=lambda k: (abs(math.log(seen[k] / target)), k))
    return s, seen[s]


@dataclass
class ScaledModel:
    """One model of the comparison: a strategy at φ, its stage table and its measured MACs."""

    strategy: str
    phi: float
    flops_mult: float          # the multiplier handed to the strategy (analytic d·w²·r²)
    mult: Multipliers
    table: dict[str, Any] = field(repr=False)
    macs: int
    macs_ratio: float          # measured, over the baseline's measured MACs
    target_ratio: float        # the compound model's measured ratio at this φ
    tolerance: float

    @property
    def matched(self) -> bool:
        return abs(self.macs_ratio / self.target_ratio - 1) <= self.tolerance + 1e-12


class MacsCounter:
    """MACs of the model a stage table describes, counted on the meta device and cached per
    architecture: the bisection revisits the same rounded architecture many times."""

    def __init__(self, build: Callable[[dict[str, Any]], Any], in_channels: int = 3) -> None:
        self.build = build
        self.in_channels = in_channels
        self._cache: dict[str, int] = {}

    def __call__(self, table: dict[str, Any]) -> int:
        key = json.dumps({k: v for k, v in table.items() if not k.endswith("_mult")}, sort_keys=True, default=str)
        if key not in self._cache:
            import torch

            from effscale.measure import count_macs_and_activations

            with torch.device("meta"):
                model = self.build(table)
            self._cache[key] = count_macs_and_activations(model, int(table["resolution"]), self.in_channels)[0]
        return self._cache[key]


def matched_models(base: dict[str, Any], strategies: list[str], phi: float, alpha: float, beta: float,
                   gamma: float, macs_of: Callable[[dict[str, Any]], int], tolerance: float = 0.05,
                   resolution_multiple: int = 1) -> list[ScaledModel]:
    """The compound model at φ (paper eq. 3) and each other strategy at the compound model's measured
    MACs ratio. At φ = 0 every strategy is the baseline itself: one model, strategy 'baseline'."""
    base_macs = macs_of(scale_stage_table(base, Multipliers(), resolution_multiple))

    def scaled(mult: Multipliers) -> tuple[dict[str, Any], float]:
        table = scale_stage_table(base, mult, resolution_multiple)
        return table, macs_of(table) / base_macs

    if phi == 0:
        table, ratio = scaled(Multipliers())
        return [ScaledModel("baseline", 0, 1.0, Multipliers(), table, base_macs, ratio, 1.0, tolerance)]
    mult = compound_multipliers(alpha, beta, gamma, phi)
    table, target = scaled(mult)
    models = [ScaledModel("compound", phi, mult.flops_ratio, mult, table, round(target * base_macs), target, target,
                          tolerance)]
    for strategy in strategies:
        if strategy == "compound":
            continue
        s, ratio = solve_multiplier(lambda s: scaled(strategy_multipliers(strategy, s))[1], target, tolerance)
        mult = strategy_multipliers(strategy, s)
        table, ratio = scaled(mult)
        models.append(ScaledModel(strategy, phi, s, mult, table, round(ratio * base_macs), ratio, target, tolerance))
    return models
