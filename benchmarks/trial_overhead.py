"""One trial through effscale against a bare PyTorch loop doing the same training.

effscale: `Search.run_jobs` with one job, the quick sweep's (`+sweep=quick`) grid point nearest the
paper's α 1.2, β 1.1, so the trial goes through everything a sweep does per trial: the Optuna trial, the
default loggers (W&B offline and CSV), Lightning's `fit` with validation each epoch and `test`, the
results row in trials.csv. The search's one-off setup (measuring the grid, opening the study) is timed
and printed apart.

Bare loop: the same network (`build_model`, the recipe's initialisation, channels_last, the trial's
precision: on CUDA bf16 autocast, or fp16 with a loss scaler where bf16 is not native), data module and
batches, the recipe's optimizer (AdamW, or SGD with Nesterov momentum; fused kernels) with weight decay
on weights only, warmup-cosine schedule per step, label smoothing, validation accuracy each epoch, test
accuracy at the end. Same seed, threads and epochs.

The two run in one process as A B B A (effscale, bare, bare, effscale; the second pair with the next
seed) so drifting load cancels; the ratio is the sum of effscale times over the sum of bare times.
What a sweep pays once (measuring the grid, opening the study, the first trial's imports and W&B
start-up) is paid by a one-batch warm-up trial first and printed apart.

    .venv/bin/python benchmarks/trial_overhead.py            # ~4 minutes on 2 CPU cores
    .venv/bin/python benchmarks/trial_overhead.py --quick    # seconds: one epoch of 4 batches, A B only
    .venv/bin/python benchmarks/trial_overhead.py logger=csv # any Hydra override of the sweep config
"""

from __future__ import annotations

import argparse
import math
import tempfile

import _timing  # noqa: F401  (sets how OpenMP threads wait, before torch loads)
import lightning as L
import torch
from torch import nn

from _timing import RecipePrecision, describe_machine, log, pick_device, recipe_optimizer, timed, verdict
from effscale import results, train
from effscale.config import compose, model_table, to_dict
from effscale.models import build_model
from effscale.search import Job, Search
from effscale.train import set_threads, warmup_cosine


def bare_trial(table: dict, data, recipe: dict, seed: int, device: torch.device) -> dict:
    """What fit_candidate trains, as a plain loop: returns the last validation and the test accuracy."""
    L.seed_everything(seed, workers=True, verbose=False)
    data.resolution, data.seed = int(table["resolution"]), seed
    model = build_model(table, data.num_classes, data.in_channels)
    # the recipe's initialisation, when this version of train.py has one (residual blocks start as identity)
    if recipe.get("zero_init_residual", True) and hasattr(train, "zero_init_residuals"):
        train.zero_init_residuals(model)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = recipe_optimizer(model, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(recipe["label_smoothing"]))
    train_loader, val, test = data.train_dataloader(), data.val_dataloader(), data.test_dataloader()
    epochs = int(recipe["max_epochs"])
    limit = recipe.get("limit_train_batches")
    per_epoch = min(len(train_loader), int(limit)) if limit else len(train_loader)
    total = max(1, per_epoch * epochs)
    warmup = min(total - 1, int(float(recipe["warmup_epochs"]) * total / epochs))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total))
    precision = RecipePrecision(device, recipe)

    def accuracy(loader, limit_batches=None) -> float:
        model.eval()
        correct, seen = torch.zeros((), dtype=torch.long, device=device), 0
        with torch.no_grad():
            for i, (x, y) in enumerate(loader):
                if limit_batches and i >= limit_batches:
                    break
                x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
                with precision.autocast():
                    correct += (model(x).argmax(1) == y).sum()  # read once per split, as the trial does
                seen += len(y)
        return int(correct) / max(seen, 1)

    val_acc = math.nan
    for _ in range(epochs):
        model.train()
        for i, (x, y) in enumerate(train_loader):
            if i >= per_epoch:
                break
            x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
            with precision.autocast():
                loss = loss_fn(model(x), y)
            precision.step(loss, opt)
            schedule.step()
        val_acc = accuracy(val, recipe.get("limit_val_batches"))
    return {"val_acc": val_acc, "test_acc": accuracy(test, recipe.get("limit_val_batches"))}


def measure(args: argparse.Namespace, device: torch.device, out: str) -> None:
    """Time the two side by side, the sweep writing under `out`."""
    # The budget filter is not what is timed here: every grid point may be the trial.
    overrides = ["+sweep=quick", f"out={out}", "search.extra_seeds=0", "budget.macs_tolerance=100",
                 "trainer.progress=false", f"device={device}"]
    if args.quick:
        overrides += ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]
    cfg = to_dict(compose("search", [*overrides, *args.overrides]))
    threads = set_threads(cfg["trainer"].get("threads"))
    log(f"one trial: effscale (Lightning, {cfg['logger']['name']} logger, results row) vs a bare loop; "
        f"{describe_machine(device)}")

    run = Search(cfg, model_table(cfg), str(device), say=lambda _line: None)
    setup = timed(lambda: (run.plan(), run.open()), device)
    # the quick grid's point nearest the paper's (α 1.2, β 1.1) stands for every trial of the sweep
    point = min(run.feasible, key=lambda c: abs(c.alpha - 1.2) + abs(c.beta - 1.1))

    def effscale_trial(seed: int) -> float:
        seconds = timed(lambda: run.run_jobs([Job(point, seed)]), device)
        row = results.read_trials(run.table).query("point == @point.point and seed == @seed")
        assert len(row) == 1 and row["state"].iloc[0] == "COMPLETE", row
        log(f"  effscale trial: {seconds:6.1f} s; val_acc {row['val_acc'].iloc[0]:.3f}")
        return seconds

    def bare(seed: int) -> float:
        result: dict = {}
        seconds = timed(lambda: result.update(bare_trial(point.table, run.data, run.recipe, seed, device)), device)
        log(f"  bare loop:      {seconds:6.1f} s; val_acc {result['val_acc']:.3f}")
        return seconds

    # Once per sweep process, not per trial: measuring the grid and opening the study, and the first
    # trial's imports and logger start-up (W&B starts its service once). A one-batch trial pays the
    # latter before the timed trials; it also resizes the data to the point's resolution, which both
    # sides then share.
    full = dict(run.recipe)
    run.recipe.update(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    warm = timed(lambda: run.run_jobs([Job(point, run.seed + 100)]), device)
    bare_trial(point.table, run.data, run.recipe, run.seed, device)
    run.recipe.clear()
    run.recipe.update(full)
    log(f"  once per sweep: measure the grid and open the study {setup:.1f} s; first (one-batch) trial {warm:.1f} s")

    ours, theirs = [effscale_trial(run.seed)], [bare(run.seed)]
    if not args.quick:  # A B B A
        theirs.append(bare(run.seed + 1))
        ours.append(effscale_trial(run.seed + 1))
    epochs = int(cfg["trainer"]["max_epochs"])
    log(f"  ({epochs} epochs of {len(run.data.train_dataloader())} batches of {run.data.batch_size} at "
        f"{point.table['resolution']} px, {threads} threads)")
    verdict("effscale trial/bare loop time", sum(ours) / sum(theirs), "<=", 1.08,
            "(smoke run)" if args.quick else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke run: one epoch of 4 batches, A B only")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the sweep config, e.g. logger=csv")
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="effscale-bench-") as out:
        measure(args, device, out)


if __name__ == "__main__":
    main()
