"""Measuring 100 grid candidates (params, MACs, activations, peak memory) against one training trial.

The search measures every grid point before it trains any (the budget filter), so measuring must
cost little next to training. Candidates: 100 points spread evenly over the compound grid at
step 0.02 of the search's default ranges (α, β in [1, 2], α·β²·γ² = 2 ± 5 %), scaled from the quick
sweep's baseline (EfficientNet-B0 at half width and depth, 36 px), measured as `effscale search` does with
`measure.measure_tables` and the budget's `measure_options` (meta device; the memory estimate for the
sweep's batch, on CUDA too, since the quick sweep sets no memory budget). Trial: one
`train.fit_candidate` of the paper's point (α 1.2, β 1.1, γ 1.15) with the quick sweep's recipe and
data (`+sweep=quick`: 3 epochs of 2,000 procedural images, validation and test included), after a
one-batch trial of another point has paid what a sweep pays once (imports, the first set-up of
Lightning and the data). The 100 candidates are measured before and after the trial; the ratio uses the
mean of the two.

    .venv/bin/python benchmarks/measure_candidates.py           # ~40 s on 2 CPU cores (most of it the trial)
    .venv/bin/python benchmarks/measure_candidates.py --quick   # seconds: 10 candidates, a 2-batch trial
"""

from __future__ import annotations

import argparse
import json

import _timing  # noqa: F401  (sets how OpenMP threads wait, before torch loads)

from _timing import describe_machine, log, pick_device, timed, verdict
from effscale.config import compose, model_table, to_dict
from effscale.data import build_datamodule
from effscale.measure import measure_table, measure_tables
from effscale.models import build_model
from effscale.scaling import compound_grid, compound_multipliers, scale_stage_table
from effscale.budget import measure_options
from effscale.train import fit_candidate, set_threads


def grid_tables(base: dict, count: int) -> list[dict]:
    points = compound_grid((1.0, 2.0), (1.0, 2.0), step=0.02, tolerance=0.05)
    chosen = [points[round(i * (len(points) - 1) / max(1, count - 1))] for i in range(count)]
    return [scale_stage_table(base, compound_multipliers(p.alpha, p.beta, p.gamma, 1.0)) for p in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 candidates, a 2-batch one-epoch trial")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of the sweep config, e.g. data=cifar10")
    args = parser.parse_args()
    if args.quick:
        args.candidates = 10
    cfg = to_dict(compose("search", ["+sweep=quick", "logger=csv", *args.overrides]))
    recipe = dict(cfg["trainer"], progress=False)
    if args.quick:
        recipe |= {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 2}
    set_threads(recipe.get("threads"))
    device = pick_device(args.device)
    data_cfg = cfg["data"]
    base = model_table(cfg)
    data = build_datamodule(data_cfg, int(base["resolution"]), int(data_cfg["batch_size"]), recipe.get("num_workers"),
                            int(cfg["seed"]))
    data.setup()
    classes, channels = data.num_classes, data.in_channels
    tables = grid_tables(base, args.candidates)
    options = measure_options(cfg, str(device), channels)
    build = lambda t: build_model(t, classes, channels)  # noqa: E731
    architectures = len({json.dumps({k: v for k, v in t.items() if k != "resolution" and not k.endswith("_mult")},
                                    sort_keys=True) for t in tables})
    log(f"measure {len(tables)} candidates ({architectures} distinct architectures, "
        f"{len({t['resolution'] for t in tables})} input sizes) vs one trial; {describe_machine(device)}")

    measured: list = []
    before = timed(lambda: measured.extend(measure_tables(tables, build, **options)), device)
    log(f"  measure_tables, {len(tables)} candidates:    {before:7.1f} s ({before / len(tables) * 1e3:.0f} ms each)")
    sample = tables[:: max(1, len(tables) // 10)]
    one_by_one = timed(lambda: [measure_table(t, build, **options) for t in sample], device)
    log(f"  measure_table one at a time:     {one_by_one / len(sample) * 1e3:7.0f} ms each ({len(sample)} timed)")

    trial_table = scale_stage_table(base, compound_multipliers(1.2, 1.1, 1.15, 1.0))
    warm = timed(lambda: fit_candidate(tables[0], data, recipe | {"max_epochs": 1, "limit_train_batches": 1,
                                                                 "limit_val_batches": 1},
                                       seed=int(cfg["seed"]), device=str(device)), device)
    log(f"  once per sweep: a one-batch trial of another point {warm:7.1f} s (not counted)")
    metrics: dict = {}
    trial = timed(lambda: metrics.update(fit_candidate(trial_table, data, recipe, seed=int(cfg["seed"]),
                                                       device=str(device))), device)
    log(f"  one trial (fit_candidate, {metrics['epochs']} epochs at {trial_table['resolution']} px): {trial:7.1f} s "
        f"(state {metrics['state']}, val_acc {metrics['val_acc']})")
    after = timed(lambda: measure_tables(tables, build, **options), device)
    log(f"  measure_tables again after the trial: {after:7.1f} s")
    mean = (before + after) / 2
    smallest = min(measured, key=lambda m: m.macs)
    largest = max(measured, key=lambda m: m.macs)
    log(f"  candidates span {smallest.macs / 1e6:.0f}–{largest.macs / 1e6:.0f} MMACs, "
        f"{smallest.params / 1e6:.1f}–{largest.params / 1e6:.1f} M params")
    verdict(f"measure {len(tables)} candidates/one trial time", mean / trial, "<=", 0.10,
            "(smoke run)" if args.quick else "")


if __name__ == "__main__":
    main()
