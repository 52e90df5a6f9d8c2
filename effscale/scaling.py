"""Model-scaling arithmetic of the EfficientNet paper (Tan & Le, ICML 2019), with no torch import.

Everything here is a pure function of numbers or plain dicts, so the maths can be read, tested and
used (by a planner, a notebook, a cluster head node) without a deep-learning stack.

Paper section 3.3, eq. 3: depth d = α^φ, width w = β^φ, resolution r = γ^φ, subject to
α·β²·γ² ≈ 2 and α, β, γ ≥ 1, so that FLOPs grow by about (α·β²·γ²)^φ ≈ 2^φ.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence


class Variant(NamedTuple):
    """A published variant: its multipliers on the baseline, input size and dropout."""

    width_mult: float
    depth_mult: float
    resolution: int
    dropout: float


# Official EfficientNet-B0…B7 (paper table / the reference implementation): hand-set, not exactly α^φ.
OFFICIAL_VARIANTS: dict[str, Variant] = {
    "b0": Variant(1.0, 1.0, 224, 0.2),
    "b1": Variant(1.0, 1.1, 240, 0.2),
    "b2": Variant(1.1, 1.2, 260, 0.3),
    "b3": Variant(1.2, 1.4, 300, 0.3),
    "b4": Variant(1.4, 1.8, 380, 0.4),
    "b5": Variant(1.6, 2.2, 456, 0.4),
    "b6": Variant(1.8, 2.6, 528, 0.5),
    "b7": Variant(2.0, 3.1, 600, 0.5),
}

# EfficientNet-Lite0…4 (TensorFlow TPU repo, efficientnet/lite/efficientnet_lite_builder.py): B0…B4's
# multipliers, but Lite3 and Lite4 at 280 and 300 px with dropout 0.3. Lite keeps the first and last
# stage's repeats fixed (`fixed_repeats` in conf/baseline/efficientnet_lite0.yaml), as its stem and head.
LITE_VARIANTS: dict[str, Variant] = {
    "b0": Variant(1.0, 1.0, 224, 0.2),
    "b1": Variant(1.0, 1.1, 240, 0.2),
    "b2": Variant(1.1, 1.2, 260, 0.3),
    "b3": Variant(1.2, 1.4, 280, 0.3),
    "b4": Variant(1.4, 1.8, 300, 0.3),
}
# A stage table's `variants` key: which published family its variant=b0… names (default: efficientnet).
VARIANT_FAMILIES = {"efficientnet": OFFICIAL_VARIANTS, "lite": LITE_VARIANTS}


# Coefficients the paper's grid search found for B0 on ImageNet (section 4).
PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA = 1.2, 1.1, 1.15


class ScalingError(ValueError):
    """A scaling request that cannot be satisfied (bad multiplier, empty grid, unknown strategy)."""


def variants_of(table: dict[str, Any]) -> dict[str, Variant]:
    """The official variants of a baseline: EfficientNet-B0…B7's unless its table names another family."""
    family = table.get("variants", "efficientnet")
    if family not in VARIANT_FAMILIES:
        raise ScalingError(f"variants: unknown {family!r}; expected {' or '.join(VARIANT_FAMILIES)}")
    return VARIANT_FAMILIES[family]


# --- rounding: how a real-valued multiplier becomes an integer architecture -----------------------


def round_filters(channels: float, width_mult: float = 1.0, divisor: int = 8) -> int:
    """Channels after width scaling: nearest multiple of `divisor`, never below 90 % of the target.

    This is the rule of the reference implementation (and torchvision's `_make_divisible`): round
    to the nearest multiple, then add one `divisor` back if rounding lost more than 10 %.
    """
    target = channels * width_mult
    rounded = max(divisor, int(target + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * target:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_mult: float = 1.0) -> int:
    """Layers in a stage after depth scaling: ceil(n·d) (reference implementation)."""
    return int(math.ceil(repeats * depth_mult))


def round_resolution(resolution: float, multiple: int = 1) -> int:
    """Input size in whole pixels, rounded to the nearest `multiple` (at least one multiple), a tie
    upwards: 40.5 px is 41 and 260 px to a multiple of 8 is 264 (Python's round() takes ties to even,
    so 40.5 went down and 41.5 up)."""
    if multiple < 1:
        raise ScalingError(f"resolution multiple must be >= 1, got {multiple}")
    return max(multiple, math.floor(resolution / multiple + 0.5) * multiple)


# --- compound scaling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Multipliers:
    """How much to scale each dimension of a baseline, relative to 1.0."""

    depth: float = 1.0
    width: float = 1.0
    resolution: float = 1.0

    @property
    def flops_ratio(self) -> float:
        """Predicted FLOPs multiplier d·w²·r² (paper section 3.3): conv FLOPs ∝ d, w², r²."""
        return self.depth * self.width**2 * self.resolution**2


def check_coefficients(alpha: float, beta: float, gamma: float) -> None:
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ScalingError(f"scale.{name} must be a number, got {value!r}")
        if value < 1.0:
            raise ScalingError(f"scale.{name} must be >= 1 (paper eq. 3), got {value}")


def check_phi(phi: float) -> None:
    if not isinstance(phi, (int, float)) or isinstance(phi, bool) or math.isnan(phi) or math.isinf(phi):
        raise ScalingError(f"scale.phi must be a number, got {phi!r}")
    if phi < 0:
        raise ScalingError(f"scale.phi must be >= 0, got {phi}")


def compound_multipliers(alpha: float, beta: float, gamma: float, phi: float) -> Multipliers:
    """Paper eq. 3: d = α^φ, w = β^φ, r = γ^φ."""
    check_coefficients(alpha, beta, gamma)
    check_phi(phi)
    return Multipliers(depth=_power(alpha, phi), width=_power(beta, phi), resolution=_power(gamma, phi))


def _power(base: float, exponent: float) -> float:
    """base**exponent, or inf past the largest float (the build limits then refuse it in one line)."""
    try:
        return float(base) ** exponent
    except OverflowError:
        return math.inf


def constraint_value(alpha: float, beta: float, gamma: float) -> float:
    """α·β²·γ², which eq. 3 asks to be ≈ 2."""
    return alpha * beta**2 * gamma**2


@dataclass(frozen=True)
class GridPoint:
    alpha: float
    beta: float
    gamma: float

    @property
    def constraint(self) -> float:
        return constraint_value(self.alpha, self.beta, self.gamma)


MAX_GRID = 100_000  # (α, β) pairs, each scaled and checked before any training (step 0.01 over [1, 2]: 10,201)


def _frange(lo: float, hi: float, step: float) -> list[float]:
    if step <= 0:
        raise ScalingError(f"grid step must be > 0, got {step}")
    n = int(math.floor((hi - lo) / step + 1e-9))
    if n > MAX_GRID:
        raise ScalingError(f"step {step:g} makes {n + 1:,} values in [{lo:g}, {hi:g}]; at most {MAX_GRID:,}")
    return [round(lo + i * step, 10) for i in range(n + 1)]


def compound_grid(
    alpha_range: Sequence[float] = (1.0, 2.0),
    beta_range: Sequence[float] = (1.0, 2.0),
    step: float = 0.05,
    target: float = 2.0,
    tolerance: float = 0.05,
    gamma_values: Sequence[float] | None = None,
    gamma_multiple: float | None = None,
) -> list[GridPoint]:
    """The φ = 1 grid of (α, β, γ) with α·β²·γ² within `tolerance` (relative) of `target`.

    Paper section 4, step 1: α and β are grid values; by default γ is solved from the
    constraint, γ = sqrt(target / (α·β²)), optionally snapped to a multiple of `gamma_multiple`;
    points with γ < 1 are dropped. With `gamma_values`, γ is gridded too and only points whose
    constraint lands within the tolerance are kept.
    """
    if tolerance < 0:
        raise ScalingError(f"tolerance must be >= 0, got {tolerance}")
    alphas, betas = _frange(alpha_range[0], alpha_range[1], step), _frange(beta_range[0], beta_range[1], step)
    if len(alphas) * len(betas) > MAX_GRID:  # each is measured before any training
        raise ScalingError(f"step {step:g} makes {len(alphas) * len(betas):,} (α, β) pairs; at most {MAX_GRID:,}")
    points: list[GridPoint] = []
    for alpha in alphas:
        for beta in betas:
            if alpha < 1 or beta < 1:
                continue
            if gamma_values is None:
                gamma = math.sqrt(target / (alpha * beta**2))
                if gamma_multiple:
                    gamma = round(round(gamma / gamma_multiple) * gamma_multiple, 10)
                candidates = [(round(gamma, 4), gamma)]  # a solved γ meets the constraint before it is rounded
            else:
                candidates = [(gamma, gamma) for gamma in gamma_values]
            for gamma, exact in candidates:
                if gamma < 1:
                    continue
                if abs(constraint_value(alpha, beta, exact) / target - 1) <= tolerance + 1e-12:
                    points.append(GridPoint(alpha, beta, gamma))
    if not points:
        raise ScalingError(
            f"no (alpha, beta, gamma) in the grid satisfies alpha*beta^2*gamma^2 = {target} "
            f"within {tolerance:.0%}; widen the ranges or the tolerance"
        )
    return points


# --- strategies at a given FLOPs multiplier -------------------------------------------------------


def single_dimension(dimension: str, flops_mult: float) -> Multipliers:
    """Scale one dimension alone so that d·w²·r² = `flops_mult` (paper fig. 3, table 3).

    Depth enters FLOPs linearly, width and resolution quadratically.
    """
    if flops_mult <= 0:
        raise ScalingError(f"FLOPs multiplier must be > 0, got {flops_mult}")
    if dimension == "depth":
        return Multipliers(depth=flops_mult)
    if dimension == "width":
        return Multipliers(width=math.sqrt(flops_mult))
    if dimension == "resolution":
        return Multipliers(resolution=math.sqrt(flops_mult))
    raise ScalingError(f"unknown dimension {dimension!r}; expected depth, width or resolution")


_WEIGHTED = re.compile(r"^d(\d+(?:\.\d+)?)_w(\d+(?:\.\d+)?)_r(\d+(?:\.\d+)?)$")


def parse_weighted(name: str) -> tuple[float, float, float]:
    """'d1_w8_r1' → (1, 8, 1): pycls-style weights over depth, width, resolution."""
    match = _WEIGHTED.match(name)
    if not match:
        raise ScalingError(f"strategy {name!r} is not of the form d<wd>_w<ww>_r<wr>, e.g. d1_w8_r1")
    weights = tuple(float(g) for g in match.groups())
    if sum(weights) <= 0:
        raise ScalingError(f"strategy {name!r} has all-zero weights")
    return weights  # type: ignore[return-value]


def weighted(flops_mult: float, wd: float, ww: float, wr: float) -> Multipliers:
    """pycls-style strategy (Dollár et al., "Fast and Accurate Model Scaling", CVPR 2021):
    d = s^(wd/Σ), w = s^(ww/2Σ), r = s^(wr/2Σ), so d·w²·r² = s exactly."""
    total = wd + ww + wr
    s = flops_mult
    return Multipliers(depth=s ** (wd / total), width=s ** (ww / (2 * total)), resolution=s ** (wr / (2 * total)))


def strategy_multipliers(strategy: str, flops_mult: float) -> Multipliers:
    """Multipliers of a strategy that is not compound scaling at a FLOPs multiplier: 'depth', 'width' or
    'resolution' scales one dimension, 'dX_wY_rZ' is a pycls weighting. Compound scaling follows its
    own α, β, γ: `compound_multipliers`."""
    if strategy in ("depth", "width", "resolution"):
        return single_dimension(strategy, flops_mult)
    return weighted(flops_mult, *parse_weighted(strategy))


# --- applying multipliers to a stage table ----------------------------------------------------------


# Far past any network a device trains (B7: 55 blocks, 600 px, 3,840 channels) and still quick to build
# and count on the meta device; past them a slip such as scale.phi=100 would leave a command building.
MAX_BLOCKS, MAX_RESOLUTION, MAX_CHANNELS = 10_000, 16_384, 1_000_000


def _check_buildable(table: dict[str, Any], mult: Multipliers, slack: float = 1.0) -> None:
    """A (scaled) stage table is within the limits above. Called on the unrounded sizes too, with
    `slack` for what rounding takes off, since rounding a size past every float (scale.phi=1e6) would
    fail without saying why."""
    blocks = sum(stage["repeats"] for stage in table["stages"])
    widest = max(part["channels"] for part in [table["stem"], table.get("head") or table["stem"], *table["stages"]])
    if not (blocks <= MAX_BLOCKS * slack and widest <= MAX_CHANNELS * slack
            and table["resolution"] <= MAX_RESOLUTION * slack):
        raise ScalingError(
            f"depth ×{mult.depth:.3g}, width ×{mult.width:.3g}, resolution ×{mult.resolution:.3g} give "
            f"{_size(blocks)} blocks, {_size(widest)} channels and {_size(table['resolution'])} px; effscale builds "
            f"up to {MAX_BLOCKS:,} blocks, {MAX_CHANNELS:,} channels and {MAX_RESOLUTION:,} px")


def _size(n: float) -> str:
    return f"{n:,.0f}" if n < 1e12 else f"{n:.3g}"


def scale_stage_table(table: dict[str, Any], mult: Multipliers, resolution_multiple: int = 1) -> dict[str, Any]:
    """Return a copy of a baseline stage table with depth, width and resolution applied.

    Only repeats, channels and input size change; every layer's operation is kept (paper section 3).
    Per-family rules come from the table itself:
      stem.scale / head.scale: 'width' (round_filters(c·w)), 'width_up' (only when w > 1, as
      MobileNetV2's head), or 'none' (EfficientNet-Lite keeps stem and head fixed).
      channel_scale: the same rule for every stage's channels ('width' in all the built-in families).
      divisor: the channel rounding multiple (8 for all the built-in families).
      stages[i].fixed_repeats: the stage keeps its repeats whatever the depth (EfficientNet-Lite's first
      and last stage).
    """
    divisor = int(table.get("divisor", 8))

    def apply(rounded: bool) -> dict[str, Any]:
        out = copy.deepcopy(dict(table))

        def scaled(channels: int, rule: str) -> float:
            if rule not in ("width", "width_up", "none"):
                raise ScalingError(f"unknown scale rule {rule!r}; expected width, width_up or none")
            w = {"width": mult.width, "width_up": max(1.0, mult.width), "none": 1.0}[rule]
            if not rounded:
                return channels * w
            return int(channels) if rule == "none" else round_filters(channels, w, divisor)

        channel_rule = out.get("channel_scale", "width")
        for part in ("stem", "head"):
            if out.get(part) and "channels" in out[part]:
                out[part]["channels"] = scaled(out[part]["channels"], out[part].get("scale", "width"))
        for stage in out["stages"]:
            stage["channels"] = scaled(stage["channels"], channel_rule)
            depth = 1.0 if stage.get("fixed_repeats") else mult.depth
            stage["repeats"] = round_repeats(stage["repeats"], depth) if rounded else stage["repeats"] * depth
        resolution = out["resolution"] * mult.resolution
        out["resolution"] = round_resolution(resolution, resolution_multiple) if rounded else resolution
        _check_buildable(out, mult, slack=1.0 if rounded else 2.0)
        return out

    apply(rounded=False)  # the sizes before rounding: far past the limits, rounding itself would fail
    out = apply(rounded=True)
    out["width_mult"] = mult.width
    out["depth_mult"] = mult.depth
    out["resolution_mult"] = mult.resolution
    return out


def multipliers_from_config(scale: dict[str, Any], variant: str | None = None,
                            variants: dict[str, Variant] = OFFICIAL_VARIANTS) -> Multipliers:
    """The multipliers a `scale` config and an optional official `variant` (of `variants`) ask for.

    `variant=b0..b7` takes the official hand-set values; `scale.phi` applies eq. 3 with
    `scale.alpha/beta/gamma`; `scale.depth/width/resolution` multiply on top (single-dimension scaling).
    """
    extra = Multipliers(
        depth=_positive(scale, "depth"), width=_positive(scale, "width"), resolution=_positive(scale, "resolution")
    )
    phi = scale.get("phi")
    if variant is not None:
        if variant not in variants:
            raise ScalingError(f"variant: unknown {variant!r}; expected one of {', '.join(variants)}")
        if phi is not None:
            raise ScalingError("variant and scale.phi both set; choose the official variant or compound scaling")
        official = variants[variant]
        base = Multipliers(depth=official.depth_mult, width=official.width_mult, resolution=1.0)
    elif phi is not None:
        base = compound_multipliers(scale.get("alpha", PAPER_ALPHA), scale.get("beta", PAPER_BETA),
                                    scale.get("gamma", PAPER_GAMMA), phi)
    else:
        base = Multipliers()
    return Multipliers(depth=base.depth * extra.depth, width=base.width * extra.width,
                       resolution=base.resolution * extra.resolution)


def _positive(scale: dict[str, Any], key: str) -> float:
    value = scale.get(key, 1.0)
    value = 1.0 if value is None else value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or math.isinf(value):
        raise ScalingError(f"scale.{key} must be a positive number, got {value!r}")
    return float(value)


def scaled_baseline(
    table: dict[str, Any], scale: dict[str, Any] | None = None, variant: str | None = None
) -> dict[str, Any]:
    """The stage table of the model a config describes: baseline + variant/phi/single-dimension scale.

    An official variant (of the table's `variants` family) also fixes the input size and dropout it was
    published with (for B2 the architecture's 260 px, as the paper, rather than torchvision's 288 px
    evaluation size).
    """
    scale = dict(scale or {})
    variants = variants_of(table)
    mult = multipliers_from_config(scale, variant, variants)
    out = scale_stage_table(table, mult, int(scale.get("resolution_multiple", 1) or 1))
    if variant is not None:
        official = variants[variant]
        base_res = table["resolution"] * _positive(scale, "resolution")
        out["resolution"] = round_resolution(official.resolution * base_res / variants["b0"].resolution,
                                             int(scale.get("resolution_multiple", 1) or 1))
        out["dropout"] = official.dropout
        out["resolution_mult"] = out["resolution"] / table["resolution"]
        _check_buildable(out, Multipliers(mult.depth, mult.width, out["resolution_mult"]))
    out["variant"] = variant
    return out
