"""The paper's scaling arithmetic, checked against hand-computed values (no torch needed)."""

import math
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from effscale import scaling as s


@pytest.mark.parametrize("channels, mult, expected", [
    (32, 1.0, 32), (32, 1.1, 32),      # 35.2 rounds down to 32 (still >= 90 % of 35.2)
    (40, 1.1, 48),                     # 44 → 48 (ties round up)
    (16, 1.2, 24),                     # 19.2 → 16 would lose 17 % (> 10 %): one divisor added back
    (320, 2.0, 640), (1280, 1.8, 2304), (24, 0.5, 16),  # 12 → 16: never below the divisor
    (112, 1.4, 160),                   # 156.8 → 160
])
def test_round_filters_matches_reference_rule(channels, mult, expected):
    assert s.round_filters(channels, mult) == expected


def test_round_filters_never_below_90_percent():
    for c in range(8, 400, 4):
        for w in (0.35, 0.5, 0.75, 1.1, 1.15, 1.3, 1.7, 2.3, 3.8):
            assert s.round_filters(c, w) >= 0.9 * c * w
            assert s.round_filters(c, w) % 8 == 0


def test_round_repeats_is_ceil():
    assert [s.round_repeats(n, 1.1) for n in (1, 2, 3, 4)] == [2, 3, 4, 5]
    assert s.round_repeats(3, 1.0) == 3 and s.round_repeats(4, 3.1) == 13


def test_round_resolution_to_multiple():
    assert s.round_resolution(224 * 1.15) == 258
    assert s.round_resolution(224 * 1.15, 8) == 256
    assert s.round_resolution(3, 32) == 32
    # A tie goes up, whichever side of it is even (round() would give 40, 42 and 256).
    assert [s.round_resolution(40.5), s.round_resolution(41.5), s.round_resolution(260, 8)] == [41, 42, 264]


def test_paper_coefficients_satisfy_constraint():
    # Paper section 4: alpha=1.2, beta=1.1, gamma=1.15 → 1.2 · 1.21 · 1.3225 = 1.92 ≈ 2.
    value = s.constraint_value(s.PAPER_ALPHA, s.PAPER_BETA, s.PAPER_GAMMA)
    assert value == pytest.approx(1.920, abs=1e-3)
    assert abs(value / 2 - 1) < 0.05


def test_compound_multipliers_follow_eq3():
    m = s.compound_multipliers(1.2, 1.1, 1.15, 2)
    assert (m.depth, m.width, m.resolution) == pytest.approx((1.44, 1.21, 1.3225))
    assert m.flops_ratio == pytest.approx(s.constraint_value(1.2, 1.1, 1.15) ** 2)  # (α·β²·γ²)^φ


@pytest.mark.parametrize("bad", [{"phi": -1}, {"phi": float("nan")}, {"phi": "x"}])
def test_compound_rejects_bad_phi(bad):
    with pytest.raises(s.ScalingError, match="scale.phi"):
        s.compound_multipliers(1.2, 1.1, 1.15, bad["phi"])


def test_compound_rejects_coefficient_below_one():
    with pytest.raises(s.ScalingError, match="scale.beta must be >= 1"):
        s.compound_multipliers(1.2, 0.9, 1.15, 1)


def test_grid_points_all_satisfy_constraint_within_tolerance():
    grid = s.compound_grid((1.0, 2.0), (1.0, 2.0), step=0.05, tolerance=0.05)
    # γ >= 1 leaves the (α, β) pairs with α·β² <= 2: 84 of the 21 × 21 grid (counted by hand).
    assert len(grid) == 84
    assert all(abs(p.constraint / 2 - 1) <= 0.05 + 1e-9 for p in grid)
    assert all(p.alpha >= 1 and p.beta >= 1 and p.gamma >= 1 for p in grid)
    # γ solved from the constraint: (1.2, 1.1) → sqrt(2 / 1.452) = 1.1736
    point = next(p for p in grid if (p.alpha, p.beta) == (1.2, 1.1))
    assert point.gamma == pytest.approx(1.1736, abs=1e-4)


def test_a_zero_tolerance_keeps_every_point_whose_gamma_is_solved_from_the_constraint():
    exact = s.compound_grid((1.0, 2.0), (1.0, 2.0), step=0.05, tolerance=0)
    assert exact == s.compound_grid((1.0, 2.0), (1.0, 2.0), step=0.05, tolerance=0.05)  # all 84: γ is rounded after


def test_gamma_snapped_to_a_step_of_0_05_puts_the_papers_own_point_in_the_grid():
    # The paper's α = 1.2, β = 1.1, γ = 1.15 has α·β²·γ² = 1.92: 4 % under 2, inside the 5 % tolerance.
    grid = s.compound_grid((1.0, 2.0), (1.0, 2.0), step=0.05, tolerance=0.05, gamma_multiple=0.05)
    assert s.GridPoint(1.2, 1.1, 1.15) in grid
    assert len(grid) == 95  # more than 84: a γ just under 1 snaps up to 1.0 and can land within 5 % of 2
    assert all(abs(p.constraint / 2 - 1) <= 0.05 + 1e-9 and round(p.gamma / 0.05, 6).is_integer() for p in grid)


def test_grid_with_gridded_gamma_keeps_only_points_near_constraint():
    grid = s.compound_grid((1.0, 1.4), (1.0, 1.2), step=0.1, gamma_values=[1.0, 1.1, 1.2, 1.3], tolerance=0.05)
    assert {(p.alpha, p.beta, p.gamma) for p in grid} >= {(1.2, 1.1, 1.2)}  # 1.2·1.21·1.44 = 2.09
    assert all(abs(p.constraint / 2 - 1) <= 0.05 + 1e-9 for p in grid)


def test_empty_grid_is_an_error():
    with pytest.raises(s.ScalingError, match="no \\(alpha, beta, gamma\\)"):
        s.compound_grid((1.0, 1.1), (1.0, 1.1), step=0.1, gamma_values=[1.0], tolerance=0.01)


@pytest.mark.parametrize("dim, expected", [
    ("depth", (4.0, 1.0, 1.0)), ("width", (1.0, 2.0, 1.0)), ("resolution", (1.0, 1.0, 2.0)),
])
def test_single_dimension_at_4x_flops(dim, expected):
    # Paper table 7's d=4, w=2, r=2 all give 4x the FLOPs of B0.
    m = s.single_dimension(dim, 4.0)
    assert (m.depth, m.width, m.resolution) == pytest.approx(expected)
    assert m.flops_ratio == pytest.approx(4.0)


def test_weighted_strategy_matches_pycls_formula():
    m = s.weighted(4.0, *s.parse_weighted("d1_w8_r1"))
    assert m.depth == pytest.approx(4 ** 0.1) and m.width == pytest.approx(4 ** 0.4)
    assert m.resolution == pytest.approx(4 ** 0.05)
    assert m.flops_ratio == pytest.approx(4.0)


def test_compound_at_phi_2_squares_each_coefficient():
    m = s.compound_multipliers(s.PAPER_ALPHA, s.PAPER_BETA, s.PAPER_GAMMA, 2)
    assert (m.depth, m.width, m.resolution) == pytest.approx((1.44, 1.21, 1.3225))  # paper eq. 3: α^φ, β^φ, γ^φ
    assert m.flops_ratio == pytest.approx(1.9203 ** 2, rel=1e-4)  # α·β²·γ² = 1.92 for the paper's α, β, γ
    with pytest.raises(s.ScalingError):
        s.strategy_multipliers("compound", 4.0)  # not a single-dimension strategy: its coefficients are its own


def test_unknown_strategy_is_an_error():
    with pytest.raises(s.ScalingError, match="d<wd>_w<ww>_r<wr>"):
        s.strategy_multipliers("bigger", 2.0)


def test_scale_stage_table_applies_family_rules():
    table = {"resolution": 224, "divisor": 8, "stem": {"channels": 32, "scale": "none"},
             "head": {"channels": 1280, "scale": "width_up"},
             "stages": [{"channels": 16, "repeats": 1}, {"channels": 24, "repeats": 2}]}
    out = s.scale_stage_table(table, s.Multipliers(depth=1.5, width=0.5, resolution=1.15))
    assert out["stem"]["channels"] == 32 and out["head"]["channels"] == 1280  # fixed / grows only
    assert [st["channels"] for st in out["stages"]] == [8, 16]
    assert [st["repeats"] for st in out["stages"]] == [2, 3]
    assert out["resolution"] == 258
    assert table["stages"][0]["channels"] == 16  # input untouched


def test_variant_b2_uses_paper_resolution_and_official_multipliers():
    table = {"resolution": 224, "stem": {"channels": 32}, "head": {"channels": 1280}, "stages": []}
    out = s.scaled_baseline(table, {}, "b2")
    assert (out["width_mult"], out["depth_mult"], out["resolution"], out["dropout"]) == (1.1, 1.2, 260, 0.3)


def test_variant_and_phi_together_is_an_error():
    with pytest.raises(s.ScalingError, match="variant and scale.phi"):
        s.multipliers_from_config({"phi": 1}, "b1")


def test_scaling_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import effscale.scaling as s; "
            "print(s.round_filters(40, 1.1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "48"
    assert math.isclose(s.constraint_value(1, 1, 1), 1)



def test_a_scale_far_past_any_trainable_network_is_refused_before_anything_is_built():
    b0 = yaml.safe_load((REPO / "conf" / "baseline" / "efficientnet_b0.yaml").read_text())
    with pytest.raises(s.ScalingError, match=r"^depth ×1e\+09, width ×1, resolution ×1 give 16,000,000,000 blocks, "
                                             r"1,280 channels and 224 px; effscale builds up to 10,000 blocks"):
        s.scale_stage_table(b0, s.Multipliers(depth=1e9, width=1.0, resolution=1.0))
    b7 = s.scale_stage_table(b0, s.Multipliers(depth=3.1, width=2.0, resolution=600 / 224))  # the largest official
    assert b7["resolution"] == 600


@pytest.mark.parametrize("scale, variant, message", [
    ({"phi": 1e6}, None, "depth ×inf, width ×inf, resolution ×inf give inf blocks, inf channels and inf px; "),
    ({"phi": 5000}, None, "depth ×inf, width ×9.19e+206, resolution ×3.08e+303 give inf blocks, 1.18e+210 channels "
                      "and 6.91e+305 px; "),
    ({"width": 1e308}, None, "depth ×1, width ×1e+308, resolution ×1 give 16 blocks, inf channels and 224 px; "),
    ({"resolution": 70}, "b7",
     "depth ×3.1, width ×2, resolution ×188 give 55 blocks, 2,560 channels and 42,000 px; "),
])
def test_a_scale_past_every_float_or_an_official_variant_past_the_limits_is_refused(scale, variant, message):
    b0 = yaml.safe_load((REPO / "conf" / "baseline" / "efficientnet_b0.yaml").read_text())
    with pytest.raises(s.ScalingError, match=f"^{re.escape(message)}effscale builds up to"):
        s.scaled_baseline(b0, scale, variant)


def test_an_infinite_coefficient_is_not_a_number():
    with pytest.raises(s.ScalingError, match=r"^scale.alpha must be a number, got inf$"):
        s.compound_multipliers(math.inf, 1.1, 1.15, 1.0)


def test_a_grid_step_that_makes_more_pairs_than_can_be_measured_is_refused():
    with pytest.raises(s.ScalingError, match=r"^step 1e-06 makes 1,000,001 values in \[1, 2\]; at most 100,000$"):
        s.compound_grid((1.0, 2.0), (1.0, 2.0), step=1e-6)
    with pytest.raises(s.ScalingError, match=r"^step 0\.002 makes 251,001 \(α, β\) pairs; at most 100,000$"):
        s.compound_grid((1.0, 2.0), (1.0, 2.0), step=0.002)
    assert len(s.compound_grid((1.0, 2.0), (1.0, 2.0), step=0.01)) > 0
