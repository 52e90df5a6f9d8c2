"""The training module's own checks: a diverged loss stops the trial, however often it is read."""

from __future__ import annotations

import signal
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from effscale.data import build_datamodule
from effscale.train import Classifier, make_trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_ddp import DATA, _tiny_network  # noqa: E402

RECIPE = {"max_epochs": 2, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "warmup_epochs": 0,
          "threads": 1, "devices": 1, "progress": False, "channels_last": True}


class NaNFrom(nn.Module):
    """The network, with NaN logits from its `step`-th training forward pass (0-based) on."""

    def __init__(self, network: nn.Module, step: int) -> None:
        super().__init__()
        self.network, self.step, self.calls = network, step, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        if self.training:
            self.calls += 1
            if self.calls > self.step:
                out = out * float("nan")
        return out


@pytest.mark.parametrize("nan_from, every, failure, steps", [
    (1, None, "loss is nan at epoch 0 step 1", 2),                   # CPU: every step is checked
    (1, 4, "loss is nan at epoch 0 step 4", 5),                      # as on CUDA: at the next check
    (5, 4, "loss is not finite in the last steps of epoch 0", 8),    # after the epoch's last check
])
def test_a_non_finite_loss_fails_the_trial_at_the_next_check(nan_from, every, failure, steps, recwarn):
    data = build_datamodule(DATA, resolution=16, batch_size=16)  # 8 steps an epoch
    module = Classifier(NaNFrom(_tiny_network(), nan_from), RECIPE)
    module.nonfinite_check_every = every
    make_trainer(RECIPE).fit(module, datamodule=data)
    assert module.failure == failure
    assert not [w for w in recwarn if "returned `None`" in str(w.message)]  # the failure says it, once
    assert module.network.calls == steps  # the trial stopped there, not at the end of its 2 epochs


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_optimizer_updates_every_tensor_with_fused_kernels(optimizer):
    recipe = {**RECIPE, "max_epochs": 1, "optimizer": optimizer, "weight_decay": 0.01}
    module = Classifier(_tiny_network(), recipe)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = make_trainer(recipe)
    trainer.fit(module, datamodule=build_datamodule(DATA, resolution=16, batch_size=16))
    (opt,) = trainer.optimizers
    assert opt.defaults["fused"] is True
    assert [group["weight_decay"] for group in opt.param_groups] == [0.01, 0.0]  # weights; norms and biases
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_gradient_clipping_under_mixed_precision_trains_with_foreach_kernels(optimizer):
    # Lightning refuses to clip a fused optimizer's gradients under mixed precision (the fused step
    # unscales them itself): on CUDA, where precision is mixed by default, the fine-tuning's clipped
    # second phase stopped with that error.
    recipe = {**RECIPE, "max_epochs": 1, "optimizer": optimizer, "precision": "bf16-mixed", "gradient_clip_val": 1.0}
    module = Classifier(_tiny_network(), recipe)
    trainer = make_trainer(recipe)
    trainer.fit(module, datamodule=build_datamodule(DATA, resolution=16, batch_size=16))
    (opt,) = trainer.optimizers
    assert not opt.defaults["fused"] and module.val_history


def test_lightnings_exit_on_a_ctrl_c_is_a_keyboardinterrupt_again_and_any_other_exit_stays_one():
    from types import SimpleNamespace

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from effscale.train import interruptible

    def ctrl_c_answered():  # what Lightning's trainer.fit does with a Ctrl-C
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    def terminated():  # what Lightning's loops raise once its SIGTERM handler has run
        raise SIGTERMException

    def preempted():  # submitit, on SLURM's preemption signal, once it has requeued the job
        sys.exit(-1)

    trainer = SimpleNamespace(interrupted=True)  # Lightning marks the trainer interrupted in each case
    saved = signal.getsignal(signal.SIGINT)
    try:
        for stop in (ctrl_c_answered, terminated):
            with pytest.raises(KeyboardInterrupt):
                interruptible(trainer, stop)
    finally:
        signal.signal(signal.SIGINT, saved)
    with pytest.raises(SystemExit) as exited:
        interruptible(trainer, preempted)
    assert exited.value.code == -1


def test_a_trial_without_a_validation_epoch_fails_rather_than_completing_unranked():
    from types import SimpleNamespace

    from effscale.train import _outcome

    module = SimpleNamespace(failure=None, pruned=False, val_history=[], test_acc=None)
    outcome = _outcome(trainer=None, module=module, datamodule=None, seconds=1.0)
    assert outcome["state"] == "FAIL" and outcome["val_acc"] is None
    assert outcome["reason"] == "no validation epoch ran (trainer settings skip validation)"


def test_a_trial_on_data_without_a_test_split_of_its_own_reports_no_test_accuracy():
    """An image folder without test/ tests on its validation images: a second copy of val_acc, not a test."""
    from types import SimpleNamespace

    from effscale.train import _outcome

    module = SimpleNamespace(failure=None, pruned=False, val_history=[0.7], test_acc=None, read_outcome=lambda: None)
    tested = []
    trainer = SimpleNamespace(test=lambda *args, **kwargs: tested.append(1) or module.__setattr__("test_acc", 0.7),
                              interrupted=False)
    outcome = _outcome(trainer, module, SimpleNamespace(has_test_split=False), seconds=1.0)
    assert outcome["state"] == "COMPLETE" and outcome["val_acc"] == 0.7 and outcome["test_acc"] is None and not tested
    outcome = _outcome(trainer, module, SimpleNamespace(has_test_split=True), seconds=1.0)
    assert outcome["test_acc"] == 0.7 and tested == [1]


@pytest.mark.parametrize("short, full", [("bf16", "bf16-mixed"), (32, "32-true"), ("64", "64-true")])
def test_a_short_precision_is_given_to_lightning_in_full_without_its_warning_per_trainer(short, full):
    from effscale.train import make_trainer

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning: "`precision=bf16` is supported for historical reasons but …"
        trainer = make_trainer({"max_epochs": 1, "precision": short, "progress": False})
    assert str(trainer.precision) == full


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision_on_cuda_is_bf16_only_where_the_gpu_computes_in_it(monkeypatch, native, expected):
    import contextlib

    from effscale.train import _precision

    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    # A V100 or T4 "supports" bf16 by emulation: torch says yes unless emulation is left out.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert _precision("cuda:0", "auto") == expected
    assert _precision("cpu", "auto") == "32-true" and _precision("cuda", "16-mixed") == "16-mixed"
    assert _precision("cuda", 16) == "16-mixed"  # Hydra reads trainer.precision=16 as a number


def test_lightnings_sigterm_notice_is_left_to_the_commands_own_line_and_its_requeue_notice_kept():
    import logging

    logger = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
    heard: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: heard.append(record.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.info("[rank: 0] Received SIGTERM: 15")  # as Lightning's handler says it
        logger.info("Requeued SLURM job: 7")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert heard == ["Requeued SLURM job: 7"]
