"""Every setting a user types is checked before a command runs (effscale/checks.py): a wrong value is
one line naming its key. The command-line side (exit status 2, nothing written) is in
tests/test_reliability.py's bad inputs."""

from __future__ import annotations

import os
import re

import pytest

from conftest import REPO
from effscale.checks import STORAGE, check_config
from effscale.config import available_options, compose, load, to_dict
from effscale.errors import UserError


@pytest.mark.parametrize("command, override, message", [
    ("search", "trainer.lr=abc", "trainer.lr: expected a number above 0, got 'abc'"),
    ("search", "search.grid=null", "search.grid: expected a mapping of keys, got None"),
    ("search", "search.grid=[]", "search.grid=[]: search.grid is a mapping of keys; set them one by one "
                                 "(search.grid.KEY=…)"),
    ("search", "trainer=[]", "trainer=[]: a config group needs an option; available: default"),
    ("measure", "measure=null", "measure: expected a mapping of keys, got None"),
    ("compare", "compare=null", "compare: expected a mapping of keys, got None"),
    ("finetune", "finetune.recipe=null", "finetune.recipe: expected a mapping of keys, got None"),
    ("search", "strategy.name=width", "strategy.name: expected compound (a search's grid is of compound coefficients; "
                                      "effscale compare scales width, depth or resolution alone: compare.strategies), "
                                      "got 'width'"),
    ("measure", "scale.resolution_multiple=0",  # a multiple of 0 px would be taken as 1
     "scale.resolution_multiple: expected null or an integer of at least 1, got 0"),
    ("search", "trainer.lr=0", "trainer.lr: expected a number above 0, got 0"),
    ("search", "trainer.max_epochs=2.5", "trainer.max_epochs: expected an integer of at least 1, got 2.5"),
    ("search", "trainer.max_epochs=true", "trainer.max_epochs: expected an integer of at least 1, got True"),
    ("search", "trainer.optimizer=adam", "trainer.optimizer: expected adamw or sgd, got 'adam'"),
    ("search", "trainer.momentum=1.0", "trainer.momentum: expected a number in [0, 1), got 1.0"),
    ("search", "trainer.precision=fp8", "trainer.precision: expected one of auto, 32-true, bf16-mixed, 16-mixed, "
                                        "bf16-true, 16-true, 64-true, 32, 16, 64, bf16, got 'fp8'"),
    ("search", "trainer.limit_train_batches=1.5",
     "trainer.limit_train_batches: expected null, a count of at least 1 or a fraction in (0, 1], got 1.5"),
    ("search", "trainer.channels_last=yes", "trainer.channels_last: expected true or false, got 'yes'"),
    ("search", "trainer.progress=sometimes", "trainer.progress: expected auto, true or false, got 'sometimes'"),
    ("search", "seed=abc", "seed: expected an integer of at least 0, got 'abc'"),
    ("search", "name=", "name: expected a folder name without / (the sweep folder is out/name), got ''"),
    ("search", "name=../elsewhere", "name: expected a folder name without / (the sweep folder is out/name), "
                                    "got '../elsewhere'"),
    ("search", "data.resolution=0", "data.resolution: expected null or an integer of at least 1, got 0"),
    ("search", "search.top_k=-1", "search.top_k: expected an integer of at least 0, got -1"),
    ("search", "search.workers=0", "search.workers: expected an integer from 1 to 1024, got 0"),
    # A typo that would start thousands of processes or threads (the latter: a MemoryError mid-trial).
    ("search", "search.workers=100000", "search.workers: expected an integer from 1 to 1024, got 100000"),
    ("search", "trainer.threads=100000", "trainer.threads: expected null or an integer from 1 to 1024, got 100000"),
    ("search", "++trainer.num_workers=5000",
     "trainer.num_workers: expected null or an integer from 0 to 1024, got 5000"),
    ("search", "search.n_trials=0", "search.n_trials: expected null or an integer of at least 1, got 0"),
    ("search", "search.storage=123", f"search.storage: expected {STORAGE[1]}, got 123"),
    ("search", "search.storage=sqlite:///", f"search.storage: expected {STORAGE[1]}, got 'sqlite:///'"),
    ("search", "search.storage=sqlite:///:memory:", f"search.storage: expected {STORAGE[1]}, got 'sqlite:///:memory:'"),
    ("search", "data.batch_size=abc", "data.batch_size: expected an integer of at least 1, got 'abc'"),
    ("search", "data.mean=abc", "data.mean: expected a list of one or more numbers, got 'abc'"),
    ("search", "data.hflip=maybe", "data.hflip: expected true or false, got 'maybe'"),
    ("search", "data=imagefolder data.val_fraction=1", "data.val_fraction: expected a number in (0, 1), got 1"),
    ("search", "search.grid=abc", "search.grid: expected a mapping of keys, got 'abc'"),
    ("measure", "scale=abc", "scale: expected a mapping of keys, got 'abc'"),
    ("compare", "compare.trainer=abc", "compare.trainer: expected a mapping of keys, got 'abc'"),
    ("search", "search.stale_after_s=abc", "search.stale_after_s: expected a number above 0, got 'abc'"),
    ("search", "budget.max_params=abc", "budget.max_params: expected null or an integer of at least 1, got 'abc'"),
    ("search", "budget.macs_tolerance=-1", "budget.macs_tolerance: expected null or a number of at least 0, got -1"),
    ("search", "budget.max_latency_ms=nan", "budget.max_latency_ms: expected null or a number above 0, got nan"),
    ("search", "search.grid.alpha=[2.0,1.0]", "search.grid.alpha: expected [low, high], two numbers with low <= high, "
                                              "got [2.0, 1.0]"),
    ("search", "search.grid.gamma_values=[abc]", "search.grid.gamma_values: expected null or a list of one or more "
                                                 "numbers above 0, got ['abc']"),
    ("measure", "baseline.stages=[]", "baseline.stages: expected a list of one or more stages, got []"),
    ("measure", "baseline.stages.1.channels=0",
     "baseline.stages[1].channels: expected an integer of at least 1, got 0"),
    ("measure", "baseline.dropout=2", "baseline.dropout: expected a number in [0, 1), got 2"),
    ("measure", "baseline=resnet50 baseline.stem.stride=0", "baseline.stem.stride: expected an integer of at least 1, "
                                                            "got 0"),
    ("measure", "measure.batch_size=0", "measure.batch_size: expected an integer from 1 to 65536, got 0"),
    ("measure", "measure.batch_size=100000000000000",
     "measure.batch_size: expected an integer from 1 to 65536, got 100000000000000"),
    ("measure", "baseline.stages.4.kernel=4",
     "baseline.stages[4].kernel: expected an odd integer of at least 1, got 4"),
    ("measure", "baseline.stem.kernel=2", "baseline.stem.kernel: expected an odd integer of at least 1, got 2"),
    ("measure", "baseline.name=null", "baseline.name: expected a name, got None"),
    ("measure", "data.num_classes=1.5", "data.num_classes: expected null or an integer of at least 1, got 1.5"),
    ("measure", "data.in_channels=0", "data.in_channels: expected an integer of at least 1, got 0"),
    ("measure", "variant=[b1,b2]", "variant: expected null or one of b0, b1, b2, b3, b4, b5, b6, b7, got ['b1', 'b2']"),
    ("measure", "device=null", "device: expected auto, cpu, cuda or cuda:N, got None"),
    ("measure", "baseline=resnet18 baseline.stochastic_depth=0.5",
     "baseline.stochastic_depth: only efficientnet blocks drop their residual branch; a resnet builds none, so set 0"),
    ("measure", "measure.optimizer=adam", "measure.optimizer: expected sgd or adamw, got 'adam'"),
    ("compare", "compare.phis=[abc]", "compare.phis: expected a list of one or more numbers of at least 0, "
                                      "got ['abc']"),
    ("compare", "compare.phis=[]", "compare.phis: expected a list of one or more numbers of at least 0, got []"),
    ("compare", "compare.seeds=0", "compare.seeds: expected an integer of at least 1, got 0"),
    ("compare", "compare.strategies=width", "compare.strategies: expected a list of one or more strategies, such as "
     "[compound, width, depth, resolution], got 'width'"),
    ("compare", "compare.strategies=[]", "compare.strategies: expected a list of one or more strategies, such as "
     "[compound, width, depth, resolution], got []"),
    ("compare", "+compare.trainer.lr=-1", "compare.trainer.lr: expected a number above 0, got -1"),
    ("compare", "logger.name=tensorboard", "logger.name: expected wandb or csv, got 'tensorboard'"),
    ("measure", "baseline.activation=gelu", "baseline.activation: expected one of hardswish, relu, relu6, silu, "
                                            "got 'gelu'"),  # before torch is imported, not once the data is read
    ("finetune", "finetune.head_epochs=0", "finetune.head_epochs: expected an integer of at least 1, got 0"),
    ("finetune", "finetune.weights=null", "finetune.weights: expected imagenet, lite0 or a weights file, got None"),
    ("finetune", "finetune.weights=''", "finetune.weights: expected imagenet, lite0 or a weights file, got ''"),
    ("finetune", "finetune.recipe.lr=abc", "finetune.recipe.lr: expected a number above 0, got 'abc'"),
    ("search", "search.storage=${oc.env:EFFSCALE_UNSET}", "search.storage: Environment variable 'EFFSCALE_UNSET' "
     "not found"),
    ("search", "search.storage=${no.such.key}", "search.storage: Interpolation key 'no.such.key' not found"),
])
def test_a_wrong_value_is_refused_by_its_key_and_what_it_accepts(command, override, message):
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        load(command, override.split())


def test_a_section_read_as_empty_when_null_may_be_null():
    assert load("compare", ["compare.trainer=null"])["compare"]["trainer"] is None
    assert load("measure", ["scale=null"])["scale"] is None


def test_hydras_own_settings_set_to_null_or_an_override_without_a_key_are_one_line_that_says_so():
    # Hydra: "Config group override must be a string or a list. Got NoneType" (int for `=1`)
    with pytest.raises(UserError, match=r"^hydra=null: hydra holds Hydra's own settings; set them one by one "
                                        r"\(hydra.KEY=…\)$"):
        compose("search", ["hydra=null"], hydra=True)
    for override in ("=1", "+=2"):
        with pytest.raises(UserError, match=f"^{re.escape(override)}: an override is KEY=VALUE, and this has no key$"):
            load("measure", [override])


@pytest.mark.parametrize("command, override, message", [
    ("search", "++trainer.max_epoch=3", "trainer.max_epoch: unknown key; it takes channels_last, "),
    ("compare", "++compare.trainer={max_epoch:1}", "compare.trainer.max_epoch: unknown key; it takes channels_last, "),
    ("finetune", "++finetune.recipe.learning_rate=0.1", "finetune.recipe.learning_rate: unknown key; it takes "),
    ("search", "++budget.max_flops=1e9", "budget.max_flops: unknown key; it takes macs_tolerance, max_latency_ms, "
                                         "max_params, max_peak_mem_mb"),
    ("search", "++search.grid.stepp=0.1", "search.grid.stepp: unknown key; it takes alpha, beta, gamma_multiple, "),
    ("search", "++search.worker=2", "search.worker: unknown key; it takes "),
    ("measure", "++data.batchsize=8", "data.batchsize: unknown key; it takes batch_size, "),
    ("measure", "++scale.alfa=1.2", "scale.alfa: unknown key; it takes alpha, beta, depth, gamma, phi, "),
    ("measure", "++measure.variant=b1", "measure.variant: unknown key; it takes batch_size, latency, memory, "),
    ("search", "++strategy.phi=2", "strategy.phi: unknown key; it takes name"),
    ("measure", "+foo=1", "foo: unknown key; a command's settings are baseline, budget, cluster, compare, "),
    ("search", "+lr=0.1", "lr: unknown key; a command's settings are "),
])
def test_a_key_added_with_plus_plus_that_nothing_reads_is_refused(command, override, message):
    # Hydra adds the key (++ asks it to); nothing would read it, so the run would ignore what was typed.
    with pytest.raises(UserError, match=f"^{re.escape(message)}"):
        load(command, [override])


@pytest.mark.parametrize("command, own", [("search", "search.phi"), ("compare", "compare.phis")])
def test_scale_phi_for_a_command_that_scales_at_its_own_phi_is_refused(command, own):
    # `effscale search scale.phi=2` reads as a search at phi = 2; it would search at search.phi around a
    # baseline already scaled to phi = 2.
    with pytest.raises(UserError, match=rf"^scale.phi=2: this command scales the baseline at {own} itself; "):
        load(command, ["scale.phi=2"])
    assert load("measure", ["scale.phi=2"])["scale"]["phi"] == 2


@pytest.mark.parametrize("command", ["measure", "search", "compare", "finetune"])
def test_every_shipped_config_passes(command):
    assert load(command, [])["seed"] == 0
    if command == "search":
        sweeps = available_options("sweep")
        assert {"quick", "paper_grid", "slurm"} <= set(sweeps)
        for sweep in sweeps:
            load(command, [f"+sweep={sweep}"])
    if command == "measure":
        baselines, sources = available_options("baseline"), available_options("data")
        assert {"efficientnet_b0", "mobilenet_v2", "resnet50"} <= set(baselines)
        assert {"procedural", "fashion_mnist", "imagefolder"} <= set(sources)
        for name in baselines:
            assert load(command, [f"baseline={name}"])["baseline"]["name"] == name
        for name in sources:
            assert load(command, [f"data={name}"])["data"]["name"] in (name, "imagefolder")  # imagenet is one


def test_out_may_start_with_the_home_folder_quoted_as_hydra_asks():
    from effscale.multirun import checked_config

    assert load("search", ['out="~/runs"'])["out"] == os.path.expanduser("~/runs")
    assert checked_config(['out="~/runs"'])[0]["out"] == os.path.expanduser("~/runs")  # with -m


def test_values_a_user_may_write_in_other_forms_pass():
    cfg = to_dict(compose("search", []))
    cfg["trainer"] |= {"precision": 32, "limit_train_batches": 0.25, "limit_val_batches": 3, "gradient_clip_val": 1,
                       "threads": 2, "progress": True, "lr": 1}
    cfg["search"] |= {"n_trials": None, "top_k": 0, "extra_seeds": 0}
    cfg |= {"name": 7, "seed": 0}
    check_config(cfg)
    cfg["trainer"]["lr"] = 0  # the same config, one value wrong: the check does look at these keys
    with pytest.raises(UserError, match="^trainer.lr: expected a number above 0, got 0$"):
        check_config(cfg)


def _b0_table():
    import yaml

    return yaml.safe_load((REPO / "conf" / "baseline" / "efficientnet_b0.yaml").read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["stages"][2].update(chanels=40), "baseline.stages[2].chanels: unknown key for a mbconv block; it takes"),
    (lambda t: t["stages"][0].update(block="basic"), "baseline.stages[0].expand: unknown key for a basic block"),
    (lambda t: t["stages"][1].pop("repeats"), "baseline.stages[1].repeats: missing"),
    (lambda t: t["stages"][1].update(block="basik"), "baseline.stages[1].block: unknown block 'basik'; expected one of"),
    (lambda t: t["stages"][1].update(block=[1]), "baseline.stages[1].block: unknown block [1]; expected one of"),
    (lambda t: t["stages"][3].update(kernel=0), "baseline.stages[3].kernel: expected an odd integer of at least 1, got 0"),
    (lambda t: t.update(stemm=t.pop("stem")), "baseline.stemm: unknown key; it takes"),
    (lambda t: t["stem"].update(kernal=3), "baseline.stem.kernal: unknown key; it takes channels, kernel, stride, scale"),
    (lambda t: t.update(channel_scale="widht"),
     "baseline.channel_scale: expected one of width, width_up, none, got 'widht'"),
    (lambda t: t["head"].update(scale="up"), "baseline.head.scale: expected one of width, width_up, none, got 'up'"),
    (lambda t: t.update(bn={"epsilon": 0.5}), "baseline.bn.epsilon: unknown key; it takes eps, momentum"),
    (lambda t: t.update(bn={"eps": 0}), "baseline.bn.eps: expected a number above 0, got 0"),
    (lambda t: t.update(head=None), "baseline.head: required for family efficientnet"),
    (lambda t: t.update(family="vgg"), "baseline.family: unknown 'vgg'; expected efficientnet, mobilenet_v2, resnet"),
    (lambda t: t.update(family="resnet", stages=[{"block": "basic", "stride": 1, "channels": 64, "repeats": 2}]),
     "baseline.head: a resnet has no head conv (its last stage feeds the classifier); set head: null"),
    (lambda t: t.update(stages=[]), "baseline.stages: expected a list of one or more stages, got []"),
])
def test_a_stage_table_key_the_builder_does_not_read_or_needs_and_lacks_is_named(edit, message):
    table = _b0_table()
    check_config({"baseline": table})  # the shipped table as it is
    edit(table)
    with pytest.raises(UserError) as raised:
        check_config({"baseline": table})
    assert str(raised.value).startswith(message)


def test_the_activations_checked_are_those_the_builder_builds():
    from effscale.checks import ACTIVATIONS
    from effscale.models.blocks import ACTIVATIONS as BUILT

    assert sorted(ACTIVATIONS) == sorted(BUILT)
