"""Train one candidate with Lightning and return one metrics dict.

The recipe is the same for every candidate of a sweep, so accuracy differences come from the
architecture alone (paper section 3.3 compares scaled models trained alike). It is smaller than the
paper's (section 5.2: RMSProp, 350 epochs on ImageNet): SGD with Nesterov momentum or AdamW, linear
warmup then cosine decay per step, label smoothing. Validation accuracy is the search objective;
test accuracy is recorded beside it and never used to choose.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from effscale.models import build_model

# Lightning announces devices and hints about workers on every fit; one line per trial is enough.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
              "lightning.fabric.utilities.seed"):
    logging.getLogger(_name).setLevel(logging.WARNING)
for _message in (r".*does not have many workers.*", r".*`srun` command is available.*",
                 r".*smaller than the logging interval.*", r".*LeafSpec.*"):
    warnings.filterwarnings("ignore", message=_message)

# Called after each validation epoch with (epoch, val_acc); returning True stops the trial as PRUNED.
Report = Callable[[int, float], bool]


class Classifier(L.LightningModule):
    """A network from `build_model` trained for classification with the sweep's recipe."""

    def __init__(self, network: nn.Module, recipe: dict[str, Any], report: Report | None = None) -> None:
        super().__init__()
        self.network = network
        self.recipe = recipe
        self.report = report
        self.channels_last = bool(recipe.get("channels_last", True))
        self.loss = nn.CrossEntropyLoss(label_smoothing=float(recipe.get("label_smoothing", 0.0)))
        self.val_history: list[float] = []
        self.test_acc: float | None = None
        self.failure: str | None = None
        self.pruned = False
        self._correct = self._seen = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, y = batch
        loss = self.loss(self(x), y)
        if not torch.isfinite(loss):
            # A diverged run cannot recover; stop now rather than spend the rest of its epochs.
            self.failure = f"loss is {loss.item()} at epoch {self.current_epoch} step {batch_idx}"
            self.trainer.should_stop = True
            return None
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def _count(self, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        self._correct += int((self(x).argmax(1) == y).sum())
        self._seen += len(y)

    def _accuracy(self) -> float:
        acc = self._correct / max(self._seen, 1)
        self._correct = self._seen = 0
        return acc

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._count(batch)

    def on_validation_epoch_end(self) -> None:
        acc = self._accuracy()
        self.val_history.append(acc)
        self.log("val_acc", acc)
        if self.report is not None and self.failure is None and self.report(self.current_epoch, acc):
            self.pruned = True
            self.trainer.should_stop = True

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._count(batch)

    def on_test_epoch_end(self) -> None:
        self.test_acc = self._accuracy()
        self.log("test_acc", self.test_acc)

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, learning-rate multiplier) pairs to optimise: all of them at the recipe's rate.
        Fine-tuning overrides it to freeze the backbone or train it more slowly."""
        return [(list(self.parameters()), 1.0)]

    def configure_optimizers(self) -> dict[str, Any]:
        r = self.recipe
        lr = float(r["lr"])
        groups = []
        for params, lr_mult in self.param_groups():
            # Weight decay on conv and linear weights only: decaying BatchNorm scales and biases
            # hurts small networks and is what the reference EfficientNet code also avoids for BN.
            decay = [p for p in params if p.ndim > 1]
            rest = [p for p in params if p.ndim <= 1]
            groups += [{"params": decay, "weight_decay": float(r.get("weight_decay", 0.0)), "lr": lr * lr_mult},
                       {"params": rest, "weight_decay": 0.0, "lr": lr * lr_mult}]
        groups = [group for group in groups if group["params"]]
        if r.get("optimizer", "sgd") == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=float(r.get("momentum", 0.9)),
                                        nesterov=bool(r.get("nesterov", True)))
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, int(float(r.get("warmup_epochs", 0)) * total / max(1, self.trainer.max_epochs)))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear from 1/warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_threads(threads: int | None) -> int:
    """Intra-op threads for CPU training: `threads`, or every core this process may use."""
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(int(threads))
    return int(threads)


def _precision(device: str, requested: str) -> str:
    """Mixed precision only pays (and only exists for BatchNorm-heavy nets without surprises) on CUDA."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _accelerator(device: str) -> tuple[str, Any]:
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return "gpu", [index]
    return "cpu", 1


def _cluster_environment() -> list[Any]:
    """Inside a SLURM job Lightning would take the job over (its SLURMEnvironment requeues on a
    signal); effscale's jobs are requeued by submitit and the worker re-runs the trial, so Lightning
    sees a plain machine."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    return [LightningEnvironment()] if SLURMEnvironment.detect() else []


def make_trainer(recipe: dict[str, Any], *, device: str = "cpu", loggers: Sequence[Any] = (),
                 callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Lightning Trainer a `trainer` recipe describes (epochs, precision, batch limits, progress bar)."""
    accelerator, devices = _accelerator(device)
    progress = recipe.get("progress", "auto")
    progress = sys.stderr.isatty() if progress in (None, "auto") else bool(progress)
    return L.Trainer(
        accelerator=accelerator, devices=devices, precision=_precision(device, recipe.get("precision", "auto")),
        max_epochs=int(recipe["max_epochs"]), logger=list(loggers) or False,
        limit_train_batches=recipe.get("limit_train_batches") or 1.0,
        limit_val_batches=recipe.get("limit_val_batches") or 1.0,
        limit_test_batches=recipe.get("limit_val_batches") or 1.0,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, log_every_n_steps=int(recipe.get("log_every_n_steps", 50)),
        gradient_clip_val=recipe.get("gradient_clip_val"), deterministic=bool(recipe.get("deterministic", False)),
        default_root_dir=recipe.get("root_dir"), callbacks=list(callbacks), plugins=_cluster_environment(),
    )


def zero_init_residuals(network: nn.Module) -> int:
    """Start every residual block as the identity by zeroing the scale of the BatchNorm before its
    addition (Goyal et al., "Accurate, Large Minibatch SGD", 2017, section 5.1). Trained from scratch
    for a few epochs on a small data set, B0 at 40 px otherwise stays near chance for hundreds of
    steps (12 % after 3 epochs of 3,000 procedural images; 30 % with this). Returns the blocks changed."""
    changed = 0
    for block in network.modules():
        if getattr(block, "use_res_connect", False):  # MBConv, MobileNetV2's inverted residual
            norm = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        elif hasattr(block, "downsample"):  # ResNet blocks: bn3 (bottleneck) or bn2 (basic)
            norm = getattr(block, "bn3", None) or block.bn2
        else:
            continue
        nn.init.zeros_(norm.weight)
        changed += 1
    return changed


def _interruptible(trainer: L.Trainer, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `trainer.fit` or `trainer.test`, keeping Ctrl-C a KeyboardInterrupt. Lightning answers it
    by ignoring SIGINT from then on and calling sys.exit(1), which would end a whole sweep with status 1
    and leave a second Ctrl-C unheard; the caller decides what an interrupt means."""
    try:
        return step(*args, **kwargs)
    except SystemExit:
        if not trainer.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None


def fit_candidate(table: dict[str, Any], datamodule: L.LightningDataModule, recipe: dict[str, Any], *,
                  seed: int = 0, device: str = "cpu", loggers: Sequence[Any] = (),
                  report: Report | None = None) -> dict[str, Any]:
    """Train the network a scaled stage table describes on `datamodule` at the table's resolution.

    `recipe` is the `trainer` config group (max_epochs, optimizer, lr, …). Returns `state`
    (COMPLETE, PRUNED or FAIL for a non-finite loss), `val_acc` (last epoch), `test_acc`, `epochs`
    run, `train_seconds` (fit wall time, validation included), `val_history` and `reason`.
    Exceptions propagate: the caller decides whether one failed trial stops a sweep.
    """
    set_threads(recipe.get("threads"))
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule.resolution = int(table["resolution"])
    datamodule.seed = seed
    network = build_model(table, datamodule.num_classes, datamodule.in_channels)
    if recipe.get("zero_init_residual", True):
        zero_init_residuals(network)
    if recipe.get("channels_last", True):
        # NHWC is what oneDNN and cuDNN run depthwise convolutions fastest in (measured in the README).
        network = network.to(memory_format=torch.channels_last)
    module = Classifier(network, recipe, report)
    trainer = make_trainer(recipe, device=device, loggers=loggers)
    start = time.perf_counter()
    _interruptible(trainer, trainer.fit, module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    state, reason = "COMPLETE", None
    if module.failure:
        state, reason = "FAIL", module.failure
    elif module.pruned:
        state, reason = "PRUNED", f"pruned after epoch {len(module.val_history)}"
    if state == "COMPLETE":
        _interruptible(trainer, trainer.test, module, datamodule=datamodule, verbose=False)
    return {
        "state": state,
        "val_acc": module.val_history[-1] if module.val_history and state != "FAIL" else None,
        "test_acc": module.test_acc,
        "epochs": len(module.val_history),
        "train_seconds": round(seconds, 2),
        "val_history": list(module.val_history),
        "reason": reason,
    }
