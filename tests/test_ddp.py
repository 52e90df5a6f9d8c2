"""One trial on several devices (`trainer.devices=N`): DDP with spawned ranks. On GPUs the ranks talk
over NCCL; here they are CPU processes talking over gloo, which runs the same code path."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from effscale.data import build_datamodule
from effscale.models import build_model
from effscale.scaling import scaled_baseline
from effscale.train import Classifier, make_trainer

sys.path.insert(0, str(Path(__file__).parent))
import reliability_scenarios as rs  # noqa: E402

DATA = {"name": "procedural", "root": None, "train_size": 128, "val_size": 64, "test_size": 64, "num_classes": 4,
        "in_channels": 3, "native_resolution": 32, "mean": [0.5] * 3, "std": [0.18] * 3}
RECIPE = {"max_epochs": 2, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "warmup_epochs": 0,
          "threads": 1, "devices": 2, "progress": False, "channels_last": True}
# Two grid points (alpha 1.95 and 2.0), one epoch each, on two CPU ranks (gloo), on any machine.
TWO_RANKS = ["search.grid.alpha=[1.95,2.0]", "trainer.devices=2", "device=cpu"]


def _tiny_network_table() -> dict:
    from effscale.config import compose, to_dict

    return scaled_baseline(to_dict(compose("measure", rs.TINY_NETWORK))["baseline"])


def _tiny_network() -> torch.nn.Module:
    return build_model({**_tiny_network_table(), "resolution": 16}, DATA["num_classes"], 3)


def test_two_ranks_measure_the_whole_validation_split_and_hand_the_weights_back(tmp_path):
    odd = DATA | {"val_size": 65}  # shards of 33 and 32 images, 3 and 2 batches: every image counts once
    data = build_datamodule(odd, resolution=16, batch_size=16)
    module = Classifier(_tiny_network(), RECIPE)
    module.outcome_path = str(tmp_path / "outcome.json")
    trainer = make_trainer(RECIPE)
    assert trainer.world_size == 2
    before = {k: v.clone() for k, v in module.network.state_dict().items()}
    trainer.fit(module, datamodule=data)
    module.read_outcome()
    assert len(module.val_history) == 2 and module.failure is None
    # The weights trained in the ranks came back to this process ...
    after = module.network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    # ... and the accuracy the ranks reported is theirs on the whole split, not one rank's half of it.
    module.network.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in data.val_dataloader():
            correct += int((module(x).argmax(1) == y).sum())
            seen += len(y)
    assert seen == 65
    assert module.val_history[-1] == correct / seen


def test_a_trial_that_diverges_on_two_ranks_fails_with_its_reason_and_a_rank_s_user_error_is_one(tmp_path):
    from PIL import Image

    from effscale.errors import UserError
    from effscale.train import fit_candidate

    table = {**_tiny_network_table(), "resolution": 16}
    data = build_datamodule(DATA, resolution=16, batch_size=16)
    outcome = fit_candidate(table, data, {**RECIPE, "optimizer": "sgd", "lr": 1e30, "max_epochs": 1})
    # Lightning refuses a skipped step under DDP: the trial used to end in an empty ProcessRaisedException.
    assert outcome["state"] == "FAIL" and outcome["reason"].startswith("loss is "), outcome
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("RGB", (20, 20), (60 * i, 90, 200)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "3.png").write_bytes(b"not a png")
    folder = build_datamodule({"name": "imagefolder", "root": str(tmp_path), "num_classes": None, "in_channels": 3,
                               "native_resolution": 224, "mean": [0.5] * 3, "std": [0.25] * 3, "num_workers": 0,
                               "verify": False, "val_fraction": 0.5}, resolution=16, batch_size=2)
    with pytest.raises(UserError, match=r"dog/3.png: unreadable image \(UnidentifiedImageError: "):
        fit_candidate(table, folder, {**RECIPE, "max_epochs": 1})


@pytest.mark.parametrize("last, raised, message", [
    ("effscale.errors.UserError: photos/3.png: unreadable image", "UserError", "photos/3.png: unreadable image"),
    ("KeyboardInterrupt", "KeyboardInterrupt", ""),
    ("ValueError: bad shape", "RuntimeError", "in a DDP rank: ValueError: bad shape"),
])
def test_what_a_rank_raised_is_raised_again_from_its_traceback_text(last, raised, message):
    from effscale.train import errors_of_ranks

    text = f"\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n  ...\n{last}\n"
    with pytest.raises(BaseException) as caught:
        with errors_of_ranks():
            raise torch.multiprocessing.ProcessRaisedException(text, 1, 4242)
    assert (type(caught.value).__name__, str(caught.value)) == (raised, message)


@pytest.mark.slow  # ~85 s: every trial spawns two ranks that import torch and Lightning
def test_search_on_two_ranks_trains_each_point_once_with_one_logger_run_per_trial(tmp_path):
    run = rs.cli("search", *rs.TINY_SEARCH, *TWO_RANKS, "logger=wandb", f"out={tmp_path}", "name=ddp",
                 env={"PYTHONWARNINGS": "default"})  # warnings shown, as a user sees them
    assert run.returncode == 0, run.stderr
    assert "Initializing distributed" not in run.stderr
    assert "sync_dist" not in run.stderr  # Lightning's advice for metrics logged per epoch, in every rank
    table = pd.read_csv(tmp_path / "ddp" / "trials.csv")
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"] and table["point"].is_unique
    assert table["val_acc"].between(0, 1).all() and table["test_acc"].between(0, 1).all()
    assert set(table["device"]) == {"2x cpu"}
    # One W&B run and one CSV log per trial, written by rank 0 only.
    assert len(list((tmp_path / "ddp" / "wandb").glob("offline-run-*"))) == 2
    assert sorted(p.name for p in (tmp_path / "ddp" / "logs").iterdir() if p.name.startswith("trial_")) == \
        ["trial_0", "trial_1"]
    metrics = pd.read_csv(tmp_path / "ddp" / "logs" / "trial_0" / "metrics.csv")
    assert metrics["val_acc"].dropna().iloc[-1] == table.loc[0, "val_acc"]


def test_pruning_a_trial_on_several_devices_is_refused_before_anything_runs(tmp_path):
    run = rs.cli("search", *rs.TINY_SEARCH, *TWO_RANKS, "search.pruner=median", f"out={tmp_path}", "name=ddp")
    assert run.returncode == 2
    assert run.stderr.strip() == ("effscale search: search.pruner=median needs trainer.devices=1: a trial on "
                                  "several devices runs in spawned DDP ranks and reports its epochs only when it ends")
    assert not (tmp_path / "ddp").exists()


def test_a_device_count_that_is_not_a_positive_integer_is_one_line(tmp_path):
    run = rs.cli("search", *rs.TINY_SEARCH, "trainer.devices=0", f"out={tmp_path}", "name=ddp")
    assert run.returncode == 2
    assert run.stderr.strip() == "effscale search: trainer.devices: expected a positive integer or auto, got 0"


def test_more_devices_than_the_gpus_a_process_sees_is_one_line(monkeypatch):
    from effscale.errors import UserError
    from effscale.train import trial_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert trial_devices({"devices": 2}, "cuda") == 2
    assert trial_devices({"devices": "auto"}, "cuda") == 2
    with pytest.raises(UserError, match=r"^trainer.devices=2: this process sees 1 GPU from cuda:1 on$"):
        trial_devices({"devices": 2}, "cuda:1")
    with pytest.raises(UserError, match=r"^trainer.devices=3: this process sees 2 GPUs from cuda on$"):
        trial_devices({"devices": 3}, "cuda")
