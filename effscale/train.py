"""Train one candidate with Lightning and return one metrics dict.

The recipe is the same for every candidate of a sweep, so accuracy differences come from the
architecture alone (paper section 3.3 compares scaled models trained alike). It is smaller than the
paper's (section 5.2: RMSProp, learning rate 0.256 decayed by 0.97 every 2.4 epochs, on ImageNet;
the TF reference trains 350 epochs): SGD with Nesterov momentum or AdamW, linear warmup then cosine
decay per step, label smoothing. Validation accuracy is the search objective; test accuracy is
recorded beside it and never used to choose.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from effscale.devices import available_cores, device_name
from effscale.errors import UserError
from effscale.models import build_model
from effscale.stops import stop_reason

# Lightning announces devices and hints about workers on every fit; one line per trial is enough.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
              "lightning.fabric.utilities.seed", "lightning.fabric.utilities.distributed"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# A Ctrl-C or SIGTERM is said once, by the command ("effscale search: interrupted"); Lightning's own
# "[rank: 0] Received SIGTERM: 15" is left out (its SLURM requeue messages, on the same logger, are not).
logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(
    lambda record: "Received SIGTERM" not in record.getMessage())
QUIET_WARNINGS = (r".*does not have many workers.*", r".*`srun` command is available.*",
                  r".*smaller than the logging interval.*", r".*LeafSpec.*",
                  r".*`training_step` returned `None`.*")  # a diverged trial's skipped step: its FAIL says why


def quiet_lightning_hints() -> None:
    """Ignore Lightning's hints that say nothing to a user of effscale (set again for each Trainer, since
    a caller's `warnings.catch_warnings` may have put the filters back)."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


quiet_lightning_hints()

# Called after each validation epoch with (epochs trained, val_acc); returning True stops the trial as PRUNED.
Report = Callable[[int, float], bool]


NONFINITE_CHECK_EVERY = 16


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
        self._finite: Tensor | None = None  # no non-finite loss since the last check
        self.nonfinite_check_every: int | None = None  # steps between checks; None: by device
        # Under DDP the ranks are spawned processes: rank 0 writes what the trial measured here, and
        # the process that launched them reads it back (see `fit_candidate`).
        self.outcome_path: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, y = batch
        loss = self.loss(self(x), y)
        finite = torch.isfinite(loss)
        self._finite = finite if self._finite is None else self._finite & finite
        # Reading a GPU value waits for the GPU to finish, so on CUDA the check is made every
        # NONFINITE_CHECK_EVERY steps (a diverged run trains a few steps more); on a CPU every step.
        every = self.nonfinite_check_every or (1 if self.device.type == "cpu" else NONFINITE_CHECK_EVERY)
        if batch_idx % every == 0 and not self._all_finite():
            # A diverged run cannot recover; stop now rather than spend the rest of its epochs.
            value = loss.item()
            self.failure = (f"loss is {value if not math.isfinite(value) else 'not finite'} "
                            f"at epoch {self.current_epoch} step {batch_idx}")
            self.trainer.should_stop = True
            if self.trainer.world_size > 1:  # Lightning refuses a skipped step under DDP: take one that adds nothing
                return sum(p.sum() * 0 for p in self.parameters())
            return None
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)  # every rank's mean, per epoch
        return loss

    def on_train_epoch_end(self) -> None:
        if self._finite is not None and not self._all_finite():
            self.failure = f"loss is not finite in the last steps of epoch {self.current_epoch}"
            self.trainer.should_stop = True

    def _all_finite(self) -> bool:
        """Whether every loss since the last check was finite, on every DDP rank."""
        finite, self._finite = self._finite, None
        if self.trainer.world_size > 1:  # every rank must stop at the same step, or DDP waits forever
            finite = self.trainer.strategy.reduce(finite.float(), reduce_op="min") > 0
        return bool(finite)

    def _count(self, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        self._correct = self._correct + (self(x).argmax(1) == y).sum()  # a tensor: no wait for the GPU per batch
        self._seen += len(y)

    def _accuracy(self) -> float:
        """Accuracy over the whole split: each DDP rank counted its own shard."""
        counts = torch.stack([torch.as_tensor(n, dtype=torch.float64, device=self.device)
                              for n in (self._correct, self._seen)])
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self._correct = self._seen = 0
        return float(counts[0] / counts[1].clamp(min=1))

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1 and self.device.type == "cpu":
            # Spawned ranks on one CPU share its cores, unless trainer.threads says what each one gets.
            set_threads(self.recipe.get("threads") or max(1, available_cores() // self.trainer.world_size))

    def on_fit_end(self) -> None:
        self._write_outcome()

    def on_test_end(self) -> None:
        self._write_outcome()

    def _write_outcome(self) -> None:
        if self.outcome_path and self.trainer.is_global_zero:
            outcome = {"val_history": self.val_history, "failure": self.failure, "test_acc": self.test_acc}
            Path(self.outcome_path).write_text(json.dumps(outcome))

    def read_outcome(self) -> None:
        """Take over what rank 0 measured, after a fit or test on spawned DDP ranks."""
        if self.outcome_path and Path(self.outcome_path).exists():
            outcome = json.loads(Path(self.outcome_path).read_text())
            self.val_history, self.failure, self.test_acc = (outcome["val_history"], outcome["failure"],
                                                             outcome["test_acc"])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._count(batch)

    def on_validation_epoch_end(self) -> None:
        acc = self._accuracy()
        self.val_history.append(acc)
        self.log("val_acc", acc, sync_dist=True)  # the same on every rank: the sync only says so to Lightning
        if self.report is not None and self.failure is None and self.report(self.current_epoch + 1, acc):
            self.pruned = True
            self.trainer.should_stop = True

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._count(batch)

    def on_test_epoch_end(self) -> None:
        self.test_acc = self._accuracy()
        self.log("test_acc", self.test_acc, sync_dist=True)

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
        # Fused kernels instead of the default on CPU, a Python loop of small ops per tensor: an AdamW
        # step over the 135 tensors of B0 at half width and depth takes 1.0 ms instead of 5.9 ms
        # (benchmarks/optimizer_step.py).
        # Lightning does not clip a fused optimizer's gradients under mixed precision (its step unscales
        # them itself), so a clipped mixed-precision run (fine-tuning's second phase on CUDA) takes foreach.
        clipped_mixed = bool(self.trainer.gradient_clip_val) and "mixed" in str(self.trainer.precision)
        fused = not clipped_mixed and all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
        if r.get("optimizer", "sgd") == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=float(r.get("momentum", 0.9)),
                                        nesterov=bool(r.get("nesterov", True)), fused=fused or None)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr, fused=fused or None)
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
    threads = int(threads or available_cores())
    torch.set_num_threads(threads)
    return threads


# Lightning's short forms, by what it takes them to mean (it warns at every Trainer that one is given).
PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def _precision(device: str, requested: str) -> str:
    """Mixed precision only pays (and only exists for BatchNorm-heavy nets without surprises) on CUDA."""
    if requested != "auto":
        return PRECISION_ALIASES.get(str(requested), str(requested))
    if device.startswith("cuda"):  # bf16 where the GPU computes in it (Ampere on), not where it is emulated
        with torch.cuda.device(device):
            return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    return "32-true"


def trial_devices(recipe: dict[str, Any], device: str) -> int:
    """How many devices one trial trains on (`trainer.devices`): a number, or auto for every GPU
    this process sees (a SLURM job's GPUs), one on CPU."""
    requested = recipe.get("devices", 1)
    if requested in (None, "auto"):
        return max(1, torch.cuda.device_count()) if device.startswith("cuda") else 1
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise UserError(f"trainer.devices: expected a positive integer or auto, got {requested!r}")
    if device.startswith("cuda"):
        first = torch.device(device).index or 0
        seen = torch.cuda.device_count() - first
        if requested > seen:
            raise UserError(f"trainer.devices={requested}: this process sees {max(0, seen)} GPU"
                            f"{'' if seen == 1 else 's'} from {device} on")
    return requested


def _accelerator(device: str, count: int = 1) -> tuple[str, Any]:
    if device.startswith("cuda"):
        first = torch.device(device).index or 0
        return "gpu", list(range(first, first + count))
    return "cpu", count


def _strategy(device: str, count: int) -> Any:
    """One process per device for a trial on several: DDP with spawned ranks, so that the caller (a
    search worker, a submitit job) is not re-executed per rank as Lightning's default launcher would."""
    if count == 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(start_method="spawn", process_group_backend="nccl" if device.startswith("cuda") else "gloo")


def _cluster_environment() -> list[Any]:
    """Inside a SLURM job Lightning would take the job over (its SLURMEnvironment requeues on a
    signal); effscale's jobs are requeued by submitit and the worker re-runs the trial, so Lightning
    sees a plain machine."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    return [LightningEnvironment()] if SLURMEnvironment.detect() else []


def make_trainer(recipe: dict[str, Any], *, device: str = "cpu", loggers: Sequence[Any] = (),
                 callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Lightning Trainer a `trainer` recipe describes (epochs, precision, batch limits, progress
    bar, devices: DDP across several)."""
    quiet_lightning_hints()
    count = trial_devices(recipe, device)
    accelerator, devices = _accelerator(device, count)
    progress = recipe.get("progress", "auto")
    progress = sys.stderr.isatty() if progress in (None, "auto") else bool(progress)
    return L.Trainer(
        accelerator=accelerator, devices=devices, strategy=_strategy(device, count),
        precision=_precision(device, recipe.get("precision", "auto")),
        max_epochs=int(recipe["max_epochs"]), logger=list(loggers) or False,
        limit_train_batches=recipe.get("limit_train_batches") or 1.0,
        limit_val_batches=recipe.get("limit_val_batches") or 1.0,
        limit_test_batches=recipe.get("limit_val_batches") or 1.0,  # a test split as large as val's
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, log_every_n_steps=int(recipe.get("log_every_n_steps", 50)),
        gradient_clip_val=recipe.get("gradient_clip_val"), deterministic=bool(recipe.get("deterministic", False)),
        callbacks=list(callbacks), plugins=_cluster_environment(),
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


def interruptible(trainer: L.Trainer, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `trainer.fit` or `trainer.test`, keeping Ctrl-C a KeyboardInterrupt. Lightning answers it
    by ignoring SIGINT from then on and calling sys.exit(1), which would end a whole sweep with status 1
    and leave a second Ctrl-C unheard; the caller decides what an interrupt means. A SIGTERM, which
    Lightning turns into a SIGTERMException (an exit), is an interrupt too. Another exit (such as
    submitit's when SLURM preempts the job) stays what it is."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        return step(*args, **kwargs)
    except SystemExit as exc:
        lightnings = isinstance(exc, SIGTERMException) or isinstance(exc.__context__, KeyboardInterrupt)
        if not (trainer.interrupted and lightnings):
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None


def fit_candidate(table: dict[str, Any], datamodule: L.LightningDataModule, recipe: dict[str, Any], *,
                  seed: int = 0, device: str = "cpu", loggers: Sequence[Any] = (),
                  report: Report | None = None) -> dict[str, Any]:
    """Train the network a scaled stage table describes on `datamodule` at the table's resolution.

    `recipe` is the `trainer` config group (max_epochs, optimizer, lr, …). Returns `state` (COMPLETE,
    PRUNED, or FAIL for a non-finite loss or no validation epoch), `val_acc` (last epoch), `test_acc`,
    `epochs` run, `train_seconds` (fit wall time, validation included), `val_history`, `reason`, and
    the `device` and `precision` it trained with. Exceptions propagate: the caller decides whether one
    failed trial stops a sweep.
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
    trainer = make_trainer(recipe, device=device, loggers=loggers)
    spawned = trainer.world_size > 1
    # Spawned DDP ranks cannot call back into this process after each epoch, so a trial on several
    # devices is reported to `report` once it has ended and is never pruned (the search refuses a
    # pruner with several devices).
    module = Classifier(network, recipe, None if spawned else report)
    with tempfile.TemporaryDirectory(prefix="effscale-ranks-") if spawned else nullcontext() as folder:
        module.outcome_path = str(Path(folder) / "outcome.json") if spawned else None
        start = time.perf_counter()
        with errors_of_ranks():
            interruptible(trainer, trainer.fit, module, datamodule=datamodule)
        seconds = time.perf_counter() - start
        module.read_outcome()
        if spawned and report is not None:
            for epoch, acc in enumerate(module.val_history, start=1):
                report(epoch, acc)
        return _outcome(trainer, module, datamodule, seconds) | {
            "device": device_name(str(trainer.strategy.root_device), trainer.num_devices),
            "precision": str(trainer.precision)}


def fit_or_fail(table: dict[str, Any], datamodule: L.LightningDataModule, recipe: dict[str, Any], *,
                log: logging.Logger, label: str, **options: Any) -> dict[str, Any]:
    """`fit_candidate`, with an exception that fails this model alone turned into a FAIL outcome whose
    reason is its first line, the traceback going to `log` under `label`: one broken candidate must
    not end a sweep. A stop (`stops.stop_reason`: Ctrl-C, an exit, a UserError) propagates."""
    try:
        return fit_candidate(table, datamodule, recipe, **options)
    except Exception as exc:
        if stop_reason(exc) is not None:
            raise
        log.exception("%s failed", label)
        return {"state": "FAIL", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}


@contextmanager
def errors_of_ranks() -> Iterator[None]:
    """What a spawned DDP rank raised reaches this process as torch's ProcessRaisedException, whose
    message is the rank's traceback as text and whose first line is empty: raise its last line, a
    UserError (a corrupt image, say) as a UserError and a Ctrl-C as a KeyboardInterrupt, so that a
    sweep stops on them as on one device."""
    try:
        yield
    except torch.multiprocessing.ProcessRaisedException as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else type(exc).__name__
        kind, _, message = last.partition(": ")
        if kind.rpartition(".")[2] == "UserError":
            raise UserError(message) from None
        if kind == "KeyboardInterrupt":
            raise KeyboardInterrupt from None
        raise RuntimeError(f"in a DDP rank: {last}") from None


def _outcome(trainer: L.Trainer, module: Classifier, datamodule: L.LightningDataModule,
             seconds: float) -> dict[str, Any]:
    """The metrics of a fitted trial, tested on the test split if it completed and the data has one
    of its own (an image folder without test/ has not: its test accuracy would be the validation's)."""
    state, reason = "COMPLETE", None
    if module.failure:
        state, reason = "FAIL", module.failure
    elif module.pruned:
        state, reason = "PRUNED", f"pruned after epoch {len(module.val_history)}"
    elif not module.val_history:  # a trial is ranked by its validation accuracy: without one it has none
        state, reason = "FAIL", "no validation epoch ran (trainer settings skip validation)"
    if state == "COMPLETE" and getattr(datamodule, "has_test_split", True):
        with errors_of_ranks():
            interruptible(trainer, trainer.test, module, datamodule=datamodule, verbose=False)
        module.read_outcome()
    return {
        "state": state,
        "val_acc": module.val_history[-1] if module.val_history and state != "FAIL" else None,
        "test_acc": module.test_acc,
        "epochs": len(module.val_history),
        "train_seconds": round(seconds, 2),
        "val_history": list(module.val_history),
        "reason": reason,
    }
