"""Data pipeline: images/s the default loader delivers against images/s the default model trains at.

Default setting: `effscale search`'s data config (procedural, batch 128, horizontal flips) and its
baseline model (EfficientNet-B0 at the data's 32 px, channels_last), trained with the trainer's
optimizer, precision and thread count. B0 is the fastest model a search trains (every candidate at φ = 1
has about twice its MACs), so it asks the most of the loader. Loader epochs and training chunks
alternate; medians of each. One-off costs (generating or reading the data, resizing it to the
candidate's resolution) are printed apart: they are paid once per sweep and once per resolution.

    .venv/bin/python benchmarks/data_pipeline.py                     # ~1 minute on 2 CPU cores
    .venv/bin/python benchmarks/data_pipeline.py --quick             # seconds
    .venv/bin/python benchmarks/data_pipeline.py data=fashion_mnist  # the real Fashion-MNIST (--data DIR)
"""

from __future__ import annotations

import argparse
import statistics

import _timing  # noqa: F401  (sets how OpenMP threads wait, before torch loads)
import torch
from torch import nn

from _timing import FASHION_MNIST, RecipePrecision, describe_machine, log, pick_device, recipe_optimizer, timed, verdict
from effscale.config import compose, model_table, to_dict
from effscale.data import build_datamodule
from effscale.models import build_model
from effscale.train import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(FASHION_MNIST), help="data.root for data=fashion_mnist")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-batches", type=int, default=6, help="training steps per repetition")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repetitions of 2 steps")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the search config, e.g. data=fashion_mnist")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.train_batches = 2, 2
    overrides = list(args.overrides)
    if "data=fashion_mnist" in overrides and not any(o.startswith("data.root=") for o in overrides):
        overrides.append(f"data.root={args.data}")
    cfg = to_dict(compose("search", overrides))
    threads = set_threads(cfg["trainer"].get("threads"))
    device = pick_device(args.device)
    table = model_table(cfg)
    data_cfg = cfg["data"]
    batch = int(data_cfg["batch_size"])
    data = build_datamodule(data_cfg, int(table["resolution"]), batch, cfg["trainer"].get("num_workers"), 0)
    log(f"data pipeline: data={data_cfg['name']}, batch {batch}, {table['resolution']} px, "
        f"{threads} threads; {describe_machine(device)}")
    load = timed(data.setup, device)
    loaders = []
    # the first loader at a resolution resizes the split (in-memory sources): once per candidate size
    resize = timed(lambda: loaders.append(data.train_dataloader()), device)
    loader = loaders[0]
    images = len(loader) * batch
    log(f"  once per sweep: load or generate the splits {load:.1f} s; once per resolution: first loader {resize:.2f} s")

    model = build_model(table, data.num_classes, data.in_channels).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    recipe = cfg["trainer"]
    opt, precision = recipe_optimizer(model, recipe), RecipePrecision(device, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(recipe["label_smoothing"]))
    fixed = [b for _, b in zip(range(args.train_batches), loader)]
    fixed = [(x.to(device), y.to(device)) for x, y in fixed]

    def epoch() -> None:
        for x, y in loader:
            if device.type == "cuda":
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def train() -> None:
        for x, y in fixed:
            x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast():
                loss = loss_fn(model(x), y)
            precision.step(loss, opt)

    train()  # warm-up
    epoch()
    delivered, consumed = [], []
    for _ in range(args.repeats):
        delivered.append(images / timed(epoch, device))
        consumed.append(len(fixed) * batch / timed(train, device))
    delivered_ips, consumed_ips = statistics.median(delivered), statistics.median(consumed)
    log(f"  loader delivers {delivered_ips:10,.0f} images/s (an epoch of {images} images)")
    log(f"  model trains at {consumed_ips:10,.0f} images/s ({table['name']}, {len(fixed)} steps per repetition)")
    verdict("loader/model images per second", delivered_ips / consumed_ips, ">=", 1.5,
            "(smoke run)" if args.quick else "")


if __name__ == "__main__":
    main()
