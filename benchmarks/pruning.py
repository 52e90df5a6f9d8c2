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

Default: real Fashion-MNIST (the files in ../shared/data, or --data-root), EfficientNet-B0 at half
width and depth on 16 px images, the φ = 1 grid α ∈ [1, 2], β ∈ [1, 1.4] at step 0.1 with every
point within the MACs check trained (21 points), 9 epochs on 2,000 images, 1,000 for validation.
`--data procedural` runs the same grid on the embedded data. It also prints how early the full
grid's winner leads, which is what decides whether any pruner can keep it (benchmarks/README.md).

    .venv/bin/python benchmarks/pruning.py                      # ~27 minutes on 2 CPU cores
    .venv/bin/python benchmarks/pruning.py --pruner hyperband
    .venv/bin/python benchmarks/pruning.py --quick              # half a minute: 3 points, 3 epochs on 256 images
"""

from __future__ import annotations

import argparse
import tempfile

import _timing  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

from _timing import FASHION_MNIST, log, pick_device, verdict
from effscale.commands import model_table
from effscale.config import compose, to_dict
from effscale.search import Search

# A wide MACs check (2x ± 100 %) keeps 21 of the 25 grid points, so a pruner has points to drop.
SETTINGS = ["logger=csv", "trainer.progress=false", "search.top_k=0", "search.extra_seeds=0",
            "budget.macs_tolerance=1.0", "scale.width=0.5", "scale.depth=0.5", "data.resolution=16",
            "search.grid={alpha:[1.0,2.0],beta:[1.0,1.4],step:0.1}", "trainer.max_epochs=9",
            "data.train_size=2000", "data.val_size=1000", "trainer.limit_val_batches=16", "data.batch_size=64",
            "baseline.dropout=0.0", "baseline.stochastic_depth=0.0", "trainer.warmup_epochs=0.5"]
QUICK = ["trainer.max_epochs=3", "data.train_size=256", "data.val_size=128",
         "search.grid={alpha:[1.0,1.2],beta:[1.0,1.2],step:0.2}"]


def search(pruner: str, out: str, device: str, overrides: list[str]):
    cfg = to_dict(compose("search", [*SETTINGS, *overrides, f"out={out}", f"name={pruner}",
                                     f"search.pruner={pruner}", f"device={device}"]))
    run = Search(cfg, model_table(cfg), device, say=lambda _line: None)
    run.plan()
    run.open()
    table = run.run()
    trained = table[table["state"].isin(["COMPLETE", "PRUNED"])]
    complete = trained[trained["state"] == "COMPLETE"]
    best = complete.loc[complete["val_acc"].idxmax()] if len(complete) else None
    return trained, best, run.study


def curves(study) -> dict[str, list[float]]:
    """Validation accuracy after each epoch, per point, as the trials reported it to Optuna."""
    return {t.user_attrs["point"]: [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
            for t in study.get_trials() if t.state.name == "COMPLETE" and "point" in t.user_attrs}


def what_early_epochs_predict(full: dict[str, list[float]], winner: str) -> None:
    """How early the full grid's winner leads, and what synchronous successive halving (every point
    1 epoch, the best third on to 3, the best third of those to the end) would have spent and kept,
    replayed on the full grid's own curves."""
    epochs = min(len(c) for c in full.values())
    ranks = [sorted(full, key=lambda p: -full[p][e]).index(winner) + 1 for e in range(epochs)]
    log(f"  the full grid's winner ranks {ranks} of {len(full)} after epochs 1..{epochs}")
    alive, spent, done = list(full), 0, 0
    for rung in sorted({1, min(3, epochs), epochs}):
        spent += len(alive) * (rung - done)
        done = rung
        if rung < epochs:
            alive = sorted(alive, key=lambda p: -full[p][rung - 1])[:max(1, round(len(alive) / 3))]
    kept = max(alive, key=lambda p: full[p][-1])
    log(f"  synchronous successive halving replayed on these curves: compute {spent / (epochs * len(full)):.2f}, "
        f"winner {kept} ({'same' if kept == winner else 'different'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruner", default="asha", choices=["asha", "hyperband", "median"])
    parser.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "procedural"])
    parser.add_argument("--data-root", default=str(FASHION_MNIST), help="the Fashion-MNIST IDX files")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 points, 3 epochs on 256 images")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for both searches")
    args = parser.parse_args()
    device = str(pick_device(args.device))
    data = [f"data={args.data}"] + ([f"data.root={args.data_root}"] if args.data == "fashion_mnist" else [])
    overrides = [*data, *(QUICK if args.quick else []), *args.overrides]
    out = tempfile.mkdtemp(prefix="effscale-pruning-")
    full, full_best, full_study = search("none", out, device, overrides)
    pruned, pruned_best, _ = search(args.pruner, out, device, overrides)
    for name, trained, best in (("full grid", full, full_best), (f"{args.pruner}", pruned, pruned_best)):
        states = trained["state"].value_counts().to_dict()
        log(f"  {name:10s} {len(trained)} trials {states}: {int(trained['epochs'].sum())} epochs, "
            f"{trained['train_seconds'].sum():.0f} s training; best {best['point']} val_acc {best['val_acc']:.3f}")
    log("  full grid, val_acc by point: " + ", ".join(
        f"{p} {v:.3f}" for p, v in full.sort_values("val_acc", ascending=False)[["point", "val_acc"]].values))
    what_early_epochs_predict(curves(full_study), full_best["point"])
    same = pruned_best is not None and pruned_best["point"] == full_best["point"]
    epochs = pruned["epochs"].sum() / full["epochs"].sum()
    seconds = pruned["train_seconds"].sum() / full["train_seconds"].sum()
    log(f"  compute pruned/full: {epochs:.2f} in epochs, {seconds:.2f} in training seconds; "
        f"same winner: {'yes' if same else 'no'}")
    verdict(f"{args.pruner}/full grid compute (epochs)", epochs, "<=", 0.35,
            ("; same winner" if same else "; a different winner") + (" (smoke run)" if args.quick else ""),
            also=same)


if __name__ == "__main__":
    main()
