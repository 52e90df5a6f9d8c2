"""Pruned multi-fidelity search against the full grid: compute spent, and whether the winner is the same.

Both sides run `effscale search` (in this process, through `search.Search`) on the same grid, data
and seed, with the grid sampler in grid order; one trains every point for every epoch
(`search.pruner=none`), the other lets Optuna stop a point after a poor epoch (`search.pruner=asha`
by default: asynchronous successive halving, a trial goes on past epochs 1 and 3 only while it is in
the best third of the trials that got there; Li et al. 2020). Compute is the sum over trials of the
epochs trained (and, printed beside it, of `train_seconds`). The winner is the point with the best
validation accuracy among completed trials; extra seeds are off so that both sides rank one seed, and
a point trains identically on both sides (same seed, same data order), so the pruned search finds the
full grid's winner exactly when it does not stop it.

An asynchronous pruner's choices also depend on the order trials arrive in: the first trials to reach
a rung have nobody to lose to, and grid order puts the largest γ first. So the script replays the
same Optuna pruner on the full grid's own curves in 100 shuffled orders (exact, for the reason above),
and the verdict asks for the same winner in grid order and in at least 90 of the 100.

Default: real Fashion-MNIST (the files in ../shared/data, $EFFSCALE_FASHION_MNIST, or --data-root),
EfficientNet-B0 at half width and depth on 12 px images, the φ = 1 grid α ∈ [1, 2], β ∈ [1, 1.4] at
step 0.1 with every point within the MACs check (25 points that build 17 networks, each trained
once), 9 epochs of 8,000 images in batches of 128, 5,000 for validation. `--data procedural` runs the same grid on the embedded data. It
also prints how early the full grid's winner leads, by how much it wins, how well each epoch ranks the
points, and what synchronous successive halving could spend on these curves and still keep the winner,
down to the cheapest schedule of any rungs: that decides whether any pruner can meet the target
(benchmarks/README.md).

    .venv/bin/python benchmarks/pruning.py                      # ~30 minutes on 2 CPU cores
    .venv/bin/python benchmarks/pruning.py --out DIR            # resumable: a rerun trains only what is missing
    .venv/bin/python benchmarks/pruning.py --pruner hyperband --reduction-factor 4
    .venv/bin/python benchmarks/pruning.py --min-epochs 2          # the first rung at epoch 2, not 1
    .venv/bin/python benchmarks/pruning.py --quick              # about a minute: 4 points, 3 epochs on 256 images
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path

import _timing  # noqa: F401  (sets how OpenMP threads wait, before torch loads)
import optuna
import pandas as pd

from _timing import FASHION_MNIST, log, pick_device, verdict
from effscale import results
from effscale.config import compose, model_table, to_dict
from effscale.search import Search, make_pruner

# A wide MACs check (2x ± 100 %) keeps every point of the grid, so a pruner has points to drop. 62 steps
# an epoch and a short warm-up leave chance within the first epoch (with 31 steps of 64 every point was
# still at chance after it, and the first rung ranked noise); batches of 128 cost ~1.7x a batch of 32 at
# these sizes, so 8,000 images an epoch cost 1.4x 2,000 and smooth the curves (benchmarks/README.md).
SETTINGS = ["logger=csv", "trainer.progress=false", "search.top_k=0", "search.extra_seeds=0",
            "budget.macs_tolerance=1.0", "scale.width=0.5", "scale.depth=0.5", "data.resolution=12",
            "search.grid={alpha:[1.0,2.0],beta:[1.0,1.4],step:0.1}", "trainer.max_epochs=9",
            "data.train_size=8000", "data.val_size=5000", "data.batch_size=128",
            "baseline.dropout=0.0", "baseline.stochastic_depth=0.0", "trainer.warmup_epochs=0.2"]
QUICK = ["trainer.max_epochs=3", "data.train_size=256", "data.val_size=128",
         "search.grid={alpha:[1.0,1.2],beta:[1.0,1.2],step:0.2}"]


def search(pruner: str, out: str, device: str, overrides: list[str], name: str | None = None):
    cfg = to_dict(compose("search", [*SETTINGS, *overrides, f"out={out}", f"name={name or pruner}",
                                     f"search.pruner={pruner}", f"device={device}"]))
    run = Search(cfg, model_table(cfg), device, say=lambda _line: None)
    run.plan()
    run.open()
    table = run.run()
    # Points that repeat another's network record its result without training (effscale/search.py):
    # they cost nothing on either side, and the winner is the point that trained it.
    trained = results.trained(table[table["state"].isin(["COMPLETE", "PRUNED"])])
    complete = trained[trained["state"] == "COMPLETE"]
    best = complete.loc[complete["val_acc"].idxmax()] if len(complete) else None
    return trained, best, run.study, cfg


def curves(study) -> dict[str, list[float]]:
    """Validation accuracy after each epoch, per trained point, as the trials reported it to Optuna."""
    return {t.user_attrs["point"]: [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
            for t in study.get_trials() if t.state.name == "COMPLETE" and "point" in t.user_attrs
            and not t.user_attrs.get("same_as")}


def what_early_epochs_predict(full: dict[str, list[float]], winner: str, val_size: int) -> None:
    """How early the full grid's winner leads, and how far behind the leader it is before that, in
    standard errors of the leader's accuracy on `val_size` images: a gap of many is a real difference
    between the networks at that epoch, not the validation sample's noise."""
    epochs = min(len(c) for c in full.values())
    ranks = [sorted(full, key=lambda p: -full[p][e]).index(winner) + 1 for e in range(epochs)]
    log(f"  the full grid's winner ranks {ranks} of {len(full)} after epochs 1..{epochs}")
    gaps = []
    for e in range(epochs):
        leader = max(c[e] for c in full.values())
        gaps.append((leader - full[winner][e]) / math.sqrt(leader * (1 - leader) / val_size))
    log("  ... behind the leader by " + ", ".join(f"{g:.1f}" for g in gaps) + " standard errors")


def rank_correlation(full: dict[str, list[float]]) -> None:
    """How well each epoch's validation accuracy orders the points as the last epoch does (Spearman)."""
    epochs = min(len(c) for c in full.values())
    frame = pd.DataFrame({e + 1: [full[p][e] for p in full] for e in range(epochs)}).rank()
    log("  rank correlation of each epoch's val_acc with the last epoch's: "
        + ", ".join(f"{e} {frame[e].corr(frame[epochs]):.2f}" for e in frame))


def halving(full: dict[str, list[float]], rungs: tuple[int, ...], keep: tuple[int, ...]) -> tuple[float, float]:
    """Synchronous successive halving on the full grid's curves: every point trains to the first rung,
    the best keep[i] at rung i go on to the next, the last ones to the end. Independent of trial order.
    Returns the share of the full grid's epochs it spends and the best final accuracy it keeps."""
    epochs = max(len(c) for c in full.values())
    alive, spent, trained = list(full), 0, 0
    for rung, k in zip(rungs, keep):
        spent += len(alive) * (rung - trained)
        alive, trained = sorted(alive, key=lambda p: -full[p][rung - 1])[:k], rung
    spent += len(alive) * (epochs - trained)
    return spent / (len(full) * epochs), max(full[p][-1] for p in alive)


def schedules(full: dict[str, list[float]], best: float) -> None:
    """What successive halving could do on these curves at all: the usual geometric rungs (first rung
    r0, then r0·η, r0·η², …, the best 1/η going on), and the cheapest schedule of one or two rungs,
    placed anywhere with any number kept, that keeps the winner: a bound no pruner can beat by
    ranking points on their validation accuracy so far, and one only someone who knows the
    answer could pick."""
    epochs, n = max(len(c) for c in full.values()), len(full)
    results = []
    for r0, eta in itertools.product((1, 2, 3), (2, 3, 4)):
        rungs = tuple(r for r in (r0 * eta**i for i in range(epochs)) if r < epochs)
        share, kept = halving(full, rungs, tuple(max(1, n // eta ** (i + 1)) for i in range(len(rungs))))
        results.append(f"r0={r0} η={eta} {share:.2f} {'yes' if kept == best else 'no'}")
    log("  synchronous successive halving (first rung r0, factor η): compute, same winner: " + "; ".join(results))
    candidates = ((rungs, keep) for count in (1, 2) for rungs in itertools.combinations(range(1, epochs), count)
                  for keep in itertools.combinations(range(n - 1, 0, -1), count))
    cheapest = min(((share, rungs, keep) for rungs, keep in candidates
                    for share, kept in [halving(full, rungs, keep)] if kept == best), default=None)
    if cheapest:
        share, rungs, keep = cheapest
        log(f"  the cheapest successive halving that keeps the winner, rungs chosen knowing it: compute {share:.2f}, "
            f"rungs at epochs {', '.join(map(str, rungs))}, keeping {', '.join(map(str, keep))}")


def replay(full: dict[str, list[float]], order: list[str], pruner: str, reduction_factor: int,
           min_epochs: int) -> tuple[int, str]:
    """Optuna's pruner run on the full grid's own curves, trials arriving one after another in `order`:
    the epochs it would have trained and the point it would have kept. Exact, since a point trains the
    same whether or not it is pruned later (the pruned search in grid order checks this)."""
    epochs = max(len(c) for c in full.values())
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, epochs, reduction_factor, min_epochs))
    spent, finished = 0, {}
    for point in order:
        trial = study.ask()
        for epoch, value in enumerate(full[point], 1):
            spent += 1
            trial.report(value, epoch)
            if epoch < len(full[point]) and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, full[point][-1])
            finished[point] = full[point][-1]
    return spent, max(finished, key=finished.get)


def other_orders(full: dict[str, list[float]], winner: str, pruner: str, reduction_factor: int, min_epochs: int,
                 standard_error: float, orders: int = 100) -> int:
    """An asynchronous pruner's choices depend on the order trials arrive in (the first trials at a rung
    have nobody to lose to), so the grid order is one draw: replay the pruner on `orders` shuffles and
    return in how many it kept the winner. Also printed: its regret, how far below the winner the point
    it kept finished, and how often that is within one standard error of a validation accuracy."""
    rng = random.Random(0)
    total = sum(len(c) for c in full.values())
    kept, near, compute, regret = 0, 0, [], []
    for _ in range(orders):
        spent, best = replay(full, rng.sample(list(full), len(full)), pruner, reduction_factor, min_epochs)
        regret.append(full[winner][-1] - full[best][-1])
        kept += regret[-1] == 0  # an identical network at the same size ties
        near += regret[-1] <= standard_error
        compute.append(spent / total)
    log(f"  {pruner} replayed on the full grid's curves in {orders} random trial orders: same winner in {kept}, "
        f"compute {statistics.mean(compute):.2f} on average ({min(compute):.2f}-{max(compute):.2f})")
    log(f"  regret (the winner's val_acc minus the kept point's): {statistics.mean(regret):.4f} on average, "
        f"{max(regret):.4f} at most; within one standard error ({standard_error:.4f}) in {near} of {orders}")
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruner", default="asha", choices=["asha", "hyperband", "median"])
    parser.add_argument("--reduction-factor", type=int, default=3, help="search.reduction_factor")
    parser.add_argument("--min-epochs", type=int, default=1, help="search.min_epochs: the first rung")
    parser.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "procedural"])
    parser.add_argument("--data-root", default=str(FASHION_MNIST), help="the Fashion-MNIST IDX files")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 points, 3 epochs on 256 images")
    parser.add_argument("--out", help="where the two searches write (default: a new temporary folder); the "
                        "folder of an earlier run resumes it, training only what it had not finished")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for both searches")
    args = parser.parse_args()
    if args.data == "fashion_mnist" and not Path(args.data_root).is_dir():
        sys.exit(f"pruning.py: no Fashion-MNIST folder at {args.data_root}: give --data-root DIR, set "
                 "EFFSCALE_FASHION_MNIST, or run on the embedded data with --data procedural")
    device = str(pick_device(args.device))
    data = [f"data={args.data}"] + ([f"data.root={args.data_root}"] if args.data == "fashion_mnist" else [])
    quick = [*QUICK, *(["data.test_size=128"] if args.data == "procedural" else [])] if args.quick else []
    overrides = [*data, *quick, *args.overrides]
    out = args.out or tempfile.mkdtemp(prefix="effscale-pruning-")
    log(f"  searches in {out}")
    full, full_best, full_study, cfg = search("none", out, device, overrides)
    points = len(full_study.get_trials(states=[optuna.trial.TrialState.COMPLETE]))
    log(f"  the grid's {points} points build {len(full)} distinct networks; training each once spends "
        f"{len(full) / points:.2f} of the epochs of training every point")
    rungs = [f"search.reduction_factor={args.reduction_factor}", f"search.min_epochs={args.min_epochs}"]
    name = args.pruner if (args.reduction_factor, args.min_epochs) == (3, 1) else \
        f"{args.pruner}-factor{args.reduction_factor}-min{args.min_epochs}"  # each setting its own study
    pruned, pruned_best, _, _ = search(args.pruner, out, device, [*overrides, *rungs], name)
    for name, trained, best in (("full grid", full, full_best), (f"{args.pruner}", pruned, pruned_best)):
        states = trained["state"].value_counts().to_dict()
        log(f"  {name:10s} {len(trained)} trials {states}: {int(trained['epochs'].sum())} epochs, "
            f"{trained['train_seconds'].sum():.0f} s training; best {best['point']} val_acc {best['val_acc']:.3f}")
    log("  full grid, val_acc by point: " + ", ".join(
        f"{p} {v:.3f}" for p, v in full.sort_values("val_acc", ascending=False)[["point", "val_acc"]].values))
    full_curves = curves(full_study)
    what_early_epochs_predict(full_curves, full_best["point"], int(cfg["data"]["val_size"]))
    rank_correlation(full_curves)
    schedules(full_curves, full_curves[full_best["point"]][-1])
    orders = 100
    best_acc = full_curves[full_best["point"]][-1]
    standard_error = math.sqrt(best_acc * (1 - best_acc) / int(cfg["data"]["val_size"]))
    kept = other_orders(full_curves, full_best["point"], args.pruner, args.reduction_factor, args.min_epochs,
                        standard_error, orders)
    runner_up = max((c[-1] for c in full_curves.values() if c[-1] < best_acc), default=0.0)
    log(f"  the full grid's winner leads the next best point by {best_acc - runner_up:.4f}")
    same = pruned_best is not None and pruned_best["point"] == full_best["point"]
    epochs = pruned["epochs"].sum() / full["epochs"].sum()
    seconds = pruned["train_seconds"].sum() / full["train_seconds"].sum()
    log(f"  compute pruned/full: {epochs:.2f} in epochs, {seconds:.2f} in training seconds; "
        f"same winner: {'yes' if same else 'no'}; pruned/training every point: "
        f"{pruned['epochs'].sum() / (points * int(cfg['trainer']['max_epochs'])):.2f} in epochs")
    # The same winner must not be luck of the order: kept in grid order and in 90 % of shuffled orders.
    robust = kept >= 0.9 * orders
    verdict(f"{args.pruner}/full grid compute (epochs)", epochs, "<=", 0.35,
            f"; {'same' if same else 'a different'} winner in grid order, the same in {kept} of {orders} "
            f"shuffled orders" + (" (smoke run)" if args.quick else ""), also=same and robust)


if __name__ == "__main__":
    main()
