"""Does each scaling dimension buy accuracy on the procedural data set?

Trains a small CNN (three stages of `depth` 3×3 conv-BN-ReLU layers with `width`, 2·`width` and
4·`width` channels, max-pooling between stages, global average pooling, a linear classifier) on the
default procedural splits, scaling one of depth, width and input resolution at a time away from a
baseline of depth 2, width 16 and 32 px, and prints validation accuracy for each.

    .venv/bin/python benchmarks/procedural_dims.py            # about 4 minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/procedural_dims.py --seed 1 --dimensions depth

The results are quoted in the docstring of effscale/procedural.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from effscale.data import build_datamodule

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "data" / "procedural.yaml"
BASELINE = {"depth": 2, "width": 16, "resolution": 32}
STEPS = {"depth": [1, 3, 4], "width": [8, 32], "resolution": [24, 48, 64]}


def tiny_cnn(depth: int, width: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    channels_in = 3
    for stage in range(3):
        channels = width * 2 ** stage
        for _ in range(depth):
            layers += [nn.Conv2d(channels_in, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True)]
            channels_in = channels
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels_in, num_classes)]
    return nn.Sequential(*layers)


def train_and_evaluate(depth: int, width: int, resolution: int, epochs: int, seed: int) -> float:
    """Validation accuracy after `epochs` of AdamW with a one-cycle schedule."""
    torch.manual_seed(seed)
    data = build_datamodule(OmegaConf.load(CONFIG), resolution=resolution, batch_size=64, seed=seed)
    model = tiny_cnn(depth, width, data.num_classes).to(memory_format=torch.channels_last)
    train = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * len(train))
    model.train()
    for _ in range(epochs):
        for x, y in train:
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in data.val_dataloader():
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dimensions", nargs="+", choices=list(STEPS), default=list(STEPS),
                        help="which dimensions to scale (the baseline always runs)")
    args = parser.parse_args()
    runs = [("baseline", BASELINE)] + [(dimension, {**BASELINE, dimension: value})
                                       for dimension in args.dimensions for value in STEPS[dimension]]
    print(f"{'scaled':<11}{'depth':>6}{'width':>6}{'px':>5}{'val acc':>9}{'seconds':>9}")
    for scaled, shape in runs:
        start = time.perf_counter()
        accuracy = train_and_evaluate(**shape, epochs=args.epochs, seed=args.seed)
        print(f"{scaled:<11}{shape['depth']:>6}{shape['width']:>6}{shape['resolution']:>5}"
              f"{100 * accuracy:>8.1f}%{time.perf_counter() - start:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
