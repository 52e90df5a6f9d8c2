"""`effscale compare`: each strategy's model lands on the compound model's measured MACs."""

import math
import re

import pandas as pd
import pytest
import yaml

from conftest import REPO
from effscale.compare import MacsCounter, matched_models, solve_multiplier
from effscale.errors import UserError
from effscale.models import build_model
from effscale.scaling import Multipliers, scale_stage_table, strategy_multipliers

TOLERANCE = 0.05


def b0_at(resolution: int) -> dict:
    table = yaml.safe_load((REPO / "conf/baseline/efficientnet_b0.yaml").read_text())
    return {**table, "resolution": resolution}


@pytest.fixture(scope="module")
def counters():
    """One MACs counter per input size, shared by the tests: the bisections revisit architectures."""
    made = {}

    def counter(resolution):
        if resolution not in made:
            base = b0_at(resolution)
            count = MacsCounter(lambda t: build_model(t, 10, 3))
            made[resolution] = (base, count, count(scale_stage_table(base, Multipliers())))
        return made[resolution]

    return counter


def solve(counters, resolution, strategy, target):
    base, count, base_macs = counters(resolution)
    return solve_multiplier(lambda s: count(scale_stage_table(base, strategy_multipliers(strategy, s))) / base_macs,
                            target)


def test_bisection_finds_the_step_nearest_the_target():
    # A staircase: the ratio only takes the values 1, 1.5, 2.1, 3, … at multipliers 1, 1.4, 2, 3, …
    steps = [(1.0, 1.0), (1.4, 1.5), (2.0, 2.1), (3.0, 3.0), (5.0, 6.0)]
    staircase = lambda s: max(r for edge, r in steps if s >= edge)
    s, ratio = solve_multiplier(staircase, 2.0)
    assert ratio == 2.1 and 2.0 <= s
    s, ratio = solve_multiplier(staircase, 4.0)  # nearest in log ratio is 3.0
    assert ratio == 3.0 and 3.0 <= s < 5.0
    assert solve_multiplier(staircase, 1.0) == (1.0, 1.0)
    # The analytic guess lands 7.5 % over, within any usual tolerance; a step just under it is 0.5 % off.
    steps = [(1.0, 1.0), (1.5, 1.92), (1.9, 1.99), (2.0, 2.15), (3.0, 3.2)]
    s, ratio = solve_multiplier(lambda s: max(r for edge, r in steps if s >= edge), 2.0)
    assert ratio == 1.99 and 1.9 <= s < 2.0
    # The first step up overshoots further than the unscaled model falls short (depth: any d > 1 adds a
    # layer to every stage): the unscaled model is the nearest.
    assert solve_multiplier(lambda s: 1.0 if s <= 1 else 1.5, 1.15) == (1.0, 1.0)


def test_of_the_multipliers_that_build_the_nearest_network_the_one_nearest_the_analytic_guess_is_kept():
    # Every s in [1.2, 3) builds the network of ratio 1.9: s = 2 (the analytic guess) names it, not 1.2000001.
    steps = [(1.0, 1.0), (1.2, 1.9), (3.0, 3.0)]
    assert solve_multiplier(lambda s: max(r for edge, r in steps if s >= edge), 2.0) == (2.0, 1.9)
    # The guess on another step: the tried s of the chosen step nearest it (1.915 here), not its edge (1.9).
    steps = [(1.0, 1.0), (1.2, 1.3), (1.9, 2.05), (2.0, 2.5)]
    s, ratio = solve_multiplier(lambda s: max(r for edge, r in steps if s >= edge), 2.0)
    assert ratio == 2.05 and 1.91 < s < 2.0


@pytest.mark.parametrize("strategy, target", [
    ("width", 2), ("width", 4), ("depth", 2), ("depth", 4), ("d1_w8_r1", 2),
])
def test_b0_at_32px_lands_within_tolerance(counters, strategy, target):
    s, ratio = solve(counters, 32, strategy, target)
    assert abs(ratio / target - 1) <= TOLERANCE, (s, ratio)


@pytest.mark.parametrize("strategy, target", [
    ("resolution", 2), ("resolution", 4), ("d1_w8_r1", 4),
])
def test_b0_at_224px_lands_within_tolerance(counters, strategy, target):
    s, ratio = solve(counters, 224, strategy, target)
    assert abs(ratio / target - 1) <= TOLERANCE, (s, ratio)


def test_resolution_alone_cannot_reach_2x_at_32px(counters):
    # At 32 px B0's last stage is 1×1; 33 px makes it 2×2 (stride 32, padded), so MACs jump from 1×
    # straight to 2.41×: the nearest step is reported, and not called matched.
    s, ratio = solve(counters, 32, "resolution", 2)
    base, _, _ = counters(32)
    assert scale_stage_table(base, strategy_multipliers("resolution", s))["resolution"] == 33
    assert round(ratio, 2) == 2.41


def test_matched_models_share_the_compound_models_measured_macs(counters):
    base, count, base_macs = counters(32)
    models = matched_models(base, ["compound", "width", "depth"], 1, 1.2, 1.1, 1.15, count, TOLERANCE)
    compound = models[0]
    assert compound.strategy == "compound" and compound.table["resolution"] == 37  # 32 · 1.15 = 36.8
    assert [stage["repeats"] for stage in compound.table["stages"]] == [2, 3, 3, 4, 4, 5, 2]  # ceil(n · 1.2)
    # Far above α·β²·γ² = 1.92: ceil adds a layer to every stage, and 37 px grows the 1×1 last stage to 2×2.
    assert compound.macs_ratio == pytest.approx(compound.macs / base_macs) and round(compound.macs_ratio, 2) == 4.43
    width, depth = models[1:]
    assert (width.strategy, depth.strategy) == ("width", "depth")
    assert width.matched and width.target_ratio == compound.macs_ratio and width.macs == count(width.table)
    assert (width.mult.depth, width.mult.resolution) == (1, 1)
    assert width.mult.width == pytest.approx(math.sqrt(width.flops_mult))
    # Depth alone steps from 4.19× (ceil(n · 4) layers) to 4.88× (ceil(n · 4.5)): the nearest step is
    # 5.4 % short of 4.43×, so it is kept but not called matched.
    assert not depth.matched and round(depth.macs_ratio, 2) == 4.19 and depth.macs == count(depth.table)
    # Width alone: the first width within 5 % is 3.4 % over; the step nearest the compound model, 0.6 % over.
    assert abs(width.macs_ratio / compound.macs_ratio - 1) < 0.01


def test_phi_zero_is_one_baseline_model(counters):
    base, count, base_macs = counters(32)
    [model] = matched_models(base, ["compound", "width"], 0, 1.2, 1.1, 1.15, count)
    assert (model.strategy, model.macs, model.macs_ratio) == ("baseline", base_macs, 1.0)


TINY = ["logger=csv", "data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=32",
        "data.resolution=16", "scale.width=0.25", "trainer.max_epochs=1", "trainer.progress=false", "trainer.threads=1",
        "compare.seeds=2", "compare.phis=[0,1]", "compare.strategies=[compound,width,depth]"]


def test_tiny_compare_trains_every_model_and_seed_resumes_and_reports(tmp_path, capsys):
    from effscale.commands import compare
    from effscale.results import read_trials

    compare([f"out={tmp_path}", "name=tiny", *TINY])
    table = read_trials(tmp_path / "tiny")
    # φ = 0: the baseline once per seed; φ = 1: compound, width and depth, each with both seeds.
    assert sorted(zip(table["strategy"], table["phi"], table["seed"])) == sorted(
        [("baseline", 0, s) for s in (0, 1)] + [(k, 1, s) for k in ("compound", "depth", "width") for s in (0, 1)])
    assert (table["state"] == "COMPLETE").all() and table["val_acc"].between(0, 1).all()
    assert (table["epochs"] == 1).all() and table["trial"].is_unique
    assert set(table["device"]) == {"cpu"} and set(table["precision"]) == {"32-true"}
    phi1 = table[table["phi"] == 1].set_index(["strategy", "seed"])
    compound = phi1.loc[("compound", 0)]
    assert (compound["depth_mult"], compound["width_mult"]) == (1.2, 1.1)
    assert (phi1.loc[("width", 0), "depth_mult"], phi1.loc[("depth", 0), "width_mult"]) == (1.0, 1.0)
    for strategy in ("width", "depth"):
        assert phi1.loc[(strategy, 0), "macs_ratio"] == pytest.approx(compound["macs_ratio"], rel=0.05)
    sweep = tmp_path / "tiny"
    assert (sweep / "report.md").is_file() and (sweep / "plots" / "accuracy_vs_macs.png").stat().st_size > 10_000
    assert "| compound | 1 | 2 |" in (sweep / "report.md").read_text()

    capsys.readouterr()
    compare([f"out={tmp_path}", "name=tiny", *TINY])  # everything is COMPLETE: nothing trains again
    assert "8 trainings already complete, 0 to run" in capsys.readouterr().out
    assert read_trials(sweep)["train_seconds"].tolist() == table["train_seconds"].tolist()
    # A comparison trained with another recipe would be ranked beside these: refused, nothing trained,
    # and no plan printed for it.
    with pytest.raises(UserError, match=r"its compare trials were trained with other settings "
                                        r"\(trainer.label_smoothing 0.1, now 0.0\)"):
        compare([f"out={tmp_path}", "name=tiny", *TINY, "trainer.label_smoothing=0.0"])
    assert capsys.readouterr().out == ""
    assert read_trials(sweep)["train_seconds"].tolist() == table["train_seconds"].tolist()
    recorded = (sweep / "settings.json").read_text()
    (sweep / "settings.json").unlink()  # ... and so would one whose settings nobody knows any more
    with pytest.raises(UserError, match=r"settings.json: no record of the settings the sweep's compare trials were "):
        compare([f"out={tmp_path}", "name=tiny", *TINY, "trainer.label_smoothing=0.0"])
    (sweep / "settings.json").write_text(recorded)
    # Inputs in multiples of 8 px: compound's 18 px become 16, so every φ = 1 model changes, and only the
    # baseline's rows stand. The 6 rows the new models replace are kept, with the table as it was.
    compare([f"out={tmp_path}", "name=tiny", *TINY, "scale.resolution_multiple=8"])
    [aside] = sweep.glob("trials.before-*.csv")
    out = capsys.readouterr().out
    assert "2 trainings already complete, 6 to run" in out
    assert f"6 completed training(s) of an earlier plan, of other models at the same strategy and φ, will be " \
           f"replaced in {sweep / 'trials.csv'}: the table as it was is kept in {aside}" in out
    pd.testing.assert_frame_equal(read_trials(aside), table)
    again = read_trials(sweep).set_index(["strategy", "phi", "seed"]).sort_index()
    assert len(again) == 8 and set(again.loc[("compound", 1), "resolution"]) == {16}
    assert not (sweep / "compare.log").exists()  # created by a failure's traceback only


def test_compare_takes_the_best_point_of_a_search(tmp_path):

    from effscale.compare import coefficients

    rows = [dict(strategy="compound", phi=1, alpha=a, beta=b, gamma=g, state=state, val_acc=acc, seed=seed,
                 point=f"a{a}_b{b}_g{g}")
            for a, b, g, state, acc, seed in [
                (1.0, 1.2, 1.18, "COMPLETE", 0.60, 0), (1.4, 1.1, 1.1, "COMPLETE", 0.70, 0),
                (1.4, 1.1, 1.1, "COMPLETE", 0.64, 1), (1.2, 1.0, 1.29, "COMPLETE", 0.66, 0),
                (1.8, 1.0, 1.05, "INFEASIBLE", None, 0)]]
    pd.DataFrame(rows).to_csv(tmp_path / "trials.csv", index=False)
    # (1.4, 1.1) averages 0.67 over its two seeds: ahead of (1.2, 1.0) at 0.66.
    chosen = coefficients({"compare": {"from_search": str(tmp_path)}})
    assert (chosen.alpha, chosen.beta, chosen.gamma) == (1.4, 1.1, 1.1) and str(tmp_path) in chosen.origin
    assert chosen.search_seeds == (0, 1)
    # A point that repeats (1.4, 1.1)'s network carries its first seed, 0.70, alone: not a better point.
    rows.append({**rows[1], "alpha": 1.5, "gamma": 1.05, "point": "a1.5_b1.1_g1.05", "same_as": rows[1]["point"]})
    pd.DataFrame(rows).to_csv(tmp_path / "trials.csv", index=False)
    chosen = coefficients({"compare": {"from_search": str(tmp_path)}})
    assert (chosen.alpha, chosen.beta, chosen.gamma) == (1.4, 1.1, 1.1)


def test_a_comparison_of_a_searched_point_trains_on_seeds_the_search_did_not_choose_it_on():
    from effscale.compare import comparison_seeds

    assert comparison_seeds(0, 3, ()) == [0, 1, 2]  # coefficients given: seed, seed + 1, …
    assert comparison_seeds(0, 3, (0, 1)) == [2, 3, 4]
    assert comparison_seeds(5, 2, (0, 1)) == [5, 6]  # already past them


def test_compare_from_a_search_plans_and_trains_past_its_seeds(tmp_path, monkeypatch, capsys):
    import effscale.train
    from effscale.commands import compare
    from effscale.results import read_trials

    search = tmp_path / "searched"
    search.mkdir()
    pd.DataFrame([dict(strategy="compound", phi=1, alpha=1.2, beta=1.1, gamma=1.15, state="COMPLETE", val_acc=acc,
                       seed=seed, point="a1.2_b1.1_g1.15") for seed, acc in ((0, 0.6), (1, 0.62))]
                 ).to_csv(search / "trials.csv", index=False)
    monkeypatch.setattr(effscale.train, "fit_candidate", lambda table, data, recipe, **kw: {
        "state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.4, "epochs": 1, "train_seconds": 1.0})
    compare([f"out={tmp_path}", "name=compared", *TINY, "compare.strategies=[compound]", f"compare.from_search={search}"])
    assert "2 seeds (seeds 2-3, past those the search chose its point on)" in capsys.readouterr().out
    table = read_trials(tmp_path / "compared")
    assert sorted(table["seed"].unique()) == [2, 3]
    # An earlier comparison's compound row on a seed the search chose its point on is pointed out.
    earlier = table[(table["strategy"] == "compound") & (table["seed"] == 2)].assign(seed=1, trial=99)
    pd.concat([table, earlier]).to_csv(tmp_path / "compared" / "trials.csv", index=False)
    compare([f"out={tmp_path}", "name=compared", *TINY, "compare.strategies=[compound]", f"compare.from_search={search}"])
    assert "has compound rows on seed(s) 1, those the search chose its point on" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["scale=null", "~scale.beta"])
def test_coefficients_left_unset_without_a_search_are_one_line(tmp_path, override):
    from effscale.commands import compare

    missing = "alpha" if override == "scale=null" else "beta"
    with pytest.raises(UserError, match=f"^scale.{missing}: not set; a comparison takes α, β, γ from scale.alpha"):
        compare([f"out={tmp_path}", "name=unset", *TINY, override])
    assert not (tmp_path / "unset").exists()


def test_compare_from_a_search_on_another_baseline_or_data_set_is_refused_before_anything_is_written(tmp_path):
    import json

    from effscale.commands import compare
    from effscale.compare import check_searched_like
    from effscale.config import load, model_table
    from effscale.results import as_recorded

    search = tmp_path / "searched"
    search.mkdir()
    pd.DataFrame([dict(strategy="compound", phi=1, alpha=1.2, beta=1.1, gamma=1.15, state="COMPLETE", val_acc=0.6,
                       seed=0, point="a1.2_b1.1_g1.15", baseline="efficientnet_b0", dataset="procedural")]
                 ).to_csv(search / "trials.csv", index=False)
    baseline = model_table(load("compare", TINY))
    (search / "settings.json").write_text(json.dumps({"search": {"baseline": as_recorded(baseline)}}))
    classes = ["circle", "square"]
    check_searched_like(str(search), baseline, "procedural", classes)  # the search's own: nothing to say
    hint = ("; give the comparison the search's settings (its +sweep preset and overrides), or scale.alpha, "
            "scale.beta and scale.gamma in place of compare.from_search to scale this baseline by them")
    with pytest.raises(UserError, match=re.escape(f"the search ran on dataset procedural, this comparison on "
                                                  f"fashion_mnist{hint}")):
        check_searched_like(str(search), baseline, "fashion_mnist", classes)
    with pytest.raises(UserError, match="the search ran on baseline efficientnet_b0, this comparison on resnet18;"):
        check_searched_like(str(search), {**baseline, "name": "resnet18"}, "procedural", classes)
    recorded = {"baseline": as_recorded(baseline), "data": {"classes": classes}}
    (search / "settings.json").write_text(json.dumps({"search": recorded}))
    with pytest.raises(UserError, match=re.escape(f"the search ran on data.classes ['circle', 'square'], this "
                                                  f"comparison on ['cat', 'dog']{hint}")):  # another image folder
        check_searched_like(str(search), baseline, "procedural", ["cat", "dog"])
    with pytest.raises(UserError, match=r"the search ran on baseline.stages 7 items, \[0\] \{.{1,60}, this "):
        check_searched_like(str(search), {**baseline, "stages": [{**baseline["stages"][0], "kernel": 5},
                                                                 *baseline["stages"][1:]]}, "procedural", classes)
    with pytest.raises(UserError, match=re.escape(f"compare.from_search={search}: the search ran on "
                                                  f"data.resolution 16, this comparison on 24{hint}")):
        compare([f"out={tmp_path}", "name=compared", *TINY, "data.resolution=24", f"compare.from_search={search}"])
    # A scaled table's multiplier is named by the setting a user gives: scale.depth, not baseline.depth_mult.
    deeper = {**baseline, "depth_mult": baseline["depth_mult"] * 2}
    with pytest.raises(UserError, match=re.escape(f"the search ran on scale.depth {baseline['depth_mult']!r}, this "
                                                  f"comparison on {deeper['depth_mult']!r}{hint}")):
        check_searched_like(str(search), deeper, "procedural", classes)
    assert not (tmp_path / "compared").exists()


def test_runs_are_grouped_by_sweep_with_one_job_type_per_strategy(tmp_path, monkeypatch):
    """What the W&B workspace groups by: group = sweep name, job_type = strategy, and the same summary
    names as the search's runs. Training is stubbed: this is about the bookkeeping."""
    import effscale.loggers
    import effscale.train
    from effscale.commands import compare

    runs, summaries, configs = [], [], []
    monkeypatch.setattr(effscale.loggers, "trial_loggers",
                        lambda kind, sweep_dir, name, *, group, job_type, config, project: runs.append(
                            (kind, group, job_type, config["phi"])) or configs.append(config) or [])
    monkeypatch.setattr(effscale.loggers, "close_loggers", lambda loggers, summary: summaries.append(summary))
    monkeypatch.setattr(effscale.train, "fit_candidate", lambda table, data, recipe, **kw: {
        "state": "COMPLETE", "val_acc": 0.5 + kw["seed"] / 10, "test_acc": 0.4, "epochs": 1, "train_seconds": 1.0})
    compare([f"out={tmp_path}", "name=grouped", *TINY, "logger=wandb", "compare.strategies=[compound,width,d1_w8_r1]"])
    assert {r[:2] for r in runs} == {("wandb", "grouped")}
    assert sorted((job, phi) for _, _, job, phi in runs) == sorted(
        [("baseline", 0)] * 2 + [(s, 1) for s in ("compound", "width", "d1_w8_r1") for _ in range(2)])
    assert all(set(s) == {"val_acc", "test_acc", "macs", "params", "train_seconds", "state"} for s in summaries)
    assert summaries[0]["val_acc"] == 0.5 and summaries[1]["val_acc"] == pytest.approx(0.6)
    # Each run says what it was trained on, so that runs of sweeps with other data are told apart.
    assert {c["data"]["train_size"] for c in configs} == {64} and "root" not in configs[0]["data"]
    assert configs[0]["scale"]["width"] == 0.25 and configs[0]["trainer"]["max_epochs"] == 1


def test_a_model_that_fails_gets_a_fail_row_with_its_reason_and_its_traceback_in_compare_log(tmp_path, monkeypatch):
    import effscale.train
    from effscale.commands import compare
    from effscale.results import read_trials

    def fit(table, data, recipe, **kw):
        if table["resolution"] != 16:
            raise RuntimeError("the compound model broke\nsecond line")
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.4, "epochs": 1, "train_seconds": 1.0}

    monkeypatch.setattr(effscale.train, "fit_candidate", fit)
    compare([f"out={tmp_path}", "name=broken", *TINY, "compare.strategies=[compound]", "compare.seeds=1"])
    table = read_trials(tmp_path / "broken").set_index("strategy")
    assert table.loc["compound", "state"] == "FAIL" and table.loc["baseline", "state"] == "COMPLETE"
    assert table.loc["compound", "reason"] == "RuntimeError: the compound model broke"
    log = (tmp_path / "broken" / "compare.log").read_text()
    assert "compound phi=1 seed 0 failed" in log and "Traceback" in log and "second line" in log


def test_a_comparison_stopped_before_its_first_row_leaves_no_sweep_folder(tmp_path, monkeypatch):
    import effscale.train
    from effscale.commands import compare

    def fit(table, data, recipe, **kw):
        raise UserError("data: a corrupt image")  # a mistake that would fail every model alike

    monkeypatch.setattr(effscale.train, "fit_candidate", fit)
    with pytest.raises(UserError, match="corrupt image"):
        compare([f"out={tmp_path}/results", "name=broken", *TINY, "compare.strategies=[compound]", "compare.seeds=1"])
    assert not (tmp_path / "results").exists()


def test_a_latency_budget_is_judged_on_the_latency_each_row_records(tmp_path, monkeypatch):
    import effscale.train
    from effscale.commands import compare
    from effscale.results import read_trials

    monkeypatch.setattr(effscale.train, "fit_candidate", lambda *a, **kw: {
        "state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.4, "epochs": 1, "train_seconds": 1.0})
    compare([f"out={tmp_path}", "name=timed", *TINY, "compare.strategies=[compound]", "compare.seeds=1",
             "budget.max_latency_ms=100000"])
    latency = read_trials(tmp_path / "timed").set_index("strategy")["latency_ms"]
    assert sorted(latency.index) == ["baseline", "compound"] and (latency > 0).all(), latency


def test_a_model_over_the_budget_is_an_infeasible_row_with_its_reason_not_trained(tmp_path, monkeypatch, capsys):
    import effscale.train
    from effscale.commands import compare
    from effscale.results import read_trials

    trained = []

    def fit(table, data, recipe, **kw):
        trained.append(table["resolution"])
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.4, "epochs": 1, "train_seconds": 1.0}

    monkeypatch.setattr(effscale.train, "fit_candidate", fit)
    compare([f"out={tmp_path}", "name=free", *TINY, "compare.seeds=1"])
    params = read_trials(tmp_path / "free").set_index("strategy")["params"]
    assert params["baseline"] < params[["compound", "width", "depth"]].min()
    trained.clear()
    capsys.readouterr()
    bound = params["compound"]
    compare([f"out={tmp_path}", "name=bounded", *TINY, "compare.seeds=1", f"budget.max_params={bound}"])
    table = read_trials(tmp_path / "bounded").set_index("strategy")
    assert sorted(trained) == sorted(table.loc[["baseline", "compound"], "resolution"].tolist())
    assert set(table.loc[["baseline", "compound"], "state"]) == {"COMPLETE"}
    for strategy in ("width", "depth"):
        row = table.loc[strategy]
        assert (row["state"], row["feasible"]) == ("INFEASIBLE", False) and pd.isna(row["val_acc"])
        assert row["reason"] == f"{params[strategy]:,} params > budget.max_params={bound:,}"
    out = capsys.readouterr().out
    assert f"  over budget: {params['width']:,} params > budget.max_params=" in out
    assert f"INFEASIBLE ({params['depth']:,} params > budget.max_params={bound:,})" in out
    assert "0 trainings already complete, 2 to run, 2 over the budget (INFEASIBLE, not trained)" in out
    compare([f"out={tmp_path}", "name=bounded", *TINY, "compare.seeds=1", f"budget.max_params={bound}"])
    assert "2 trainings already complete, 0 to run, 2 over the budget" in capsys.readouterr().out
    assert read_trials(tmp_path / "bounded")["trial"].tolist() == table.reset_index()["trial"].tolist()  # no new rows
    # Compound over the budget at a φ: the others there are matched to its MACs, there is nothing to compare.
    with pytest.raises(UserError, match=re.escape(f"budget: the compound model at phi=1 is over it "
                                                  f"({params['compound']:,} params > budget.max_params="
                                                  f"{params['baseline']:,}), so nothing at that phi has a model")):
        compare([f"out={tmp_path}", "name=nothing", *TINY, "compare.seeds=1",
                 f"budget.max_params={params['baseline']}"])
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(UserError, match=r"^budget: none of the 4 models of the comparison fits \(the first, baseline "
                                        r"at phi=0: [\d,]+ params > budget.max_params=1\)$"):
        compare([f"out={tmp_path}", "name=nothing", *TINY, "compare.seeds=1", "budget.max_params=1"])
    assert not (tmp_path / "nothing").exists()


def test_compare_takes_the_best_point_of_a_search_run_at_another_phi(tmp_path):
    from effscale.compare import coefficients

    rows = [dict(strategy="compound", phi=2, alpha=a, beta=b, gamma=g, state="COMPLETE", val_acc=acc, seed=0,
                 point=f"a{a}_b{b}_g{g}") for a, b, g, acc in [(1.0, 1.2, 1.18, 0.60), (1.4, 1.1, 1.1, 0.70)]]
    pd.DataFrame(rows).to_csv(tmp_path / "trials.csv", index=False)
    chosen = coefficients({"compare": {"from_search": str(tmp_path)}})
    assert (chosen.alpha, chosen.beta, chosen.gamma) == (1.4, 1.1, 1.1)


def test_a_comparison_whose_every_training_fails_exits_1_saying_where_to_look(tmp_path, monkeypatch, capsys):
    import effscale.train
    from effscale.commands import compare
    from effscale.results import read_trials

    broken = {"yes": False}

    def fit(table, data, recipe, **kw):
        if broken["yes"]:
            raise RuntimeError("diverged")
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.4, "epochs": 1, "train_seconds": 1.0}

    monkeypatch.setattr(effscale.train, "fit_candidate", fit)
    compare([f"out={tmp_path}", "name=sweep", *TINY, "compare.strategies=[compound]", "compare.seeds=1"])
    # Another comparison in the same sweep, every training of which fails: the first one's rows do not hide it.
    broken["yes"] = True
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        compare([f"out={tmp_path}", "name=sweep", *TINY, "compare.strategies=[compound]", "compare.seeds=1",
                 "scale.alpha=1.4", "scale.beta=1.05", "scale.gamma=1.1"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "effscale compare: no trial completed" in err and str(tmp_path / "sweep" / "compare.log") in err
    assert sorted(read_trials(tmp_path / "sweep")["state"]) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]


def test_a_training_that_fails_without_a_traceback_prints_its_reason_and_names_no_log(tmp_path, monkeypatch, capsys):
    import effscale.train
    from effscale.commands import compare

    def fit(table, data, recipe, **kw):  # a diverged training: a FAIL with its reason, no exception
        return {"state": "FAIL", "reason": "loss is nan at epoch 0 step 1", "epochs": 1, "train_seconds": 1.0}

    monkeypatch.setattr(effscale.train, "fit_candidate", fit)
    with pytest.raises(SystemExit) as stopped:
        compare([f"out={tmp_path}", "name=diverged", *TINY, "compare.strategies=[compound]", "compare.seeds=1"])
    assert stopped.value.code == 1
    out, err = capsys.readouterr()
    assert "FAIL (loss is nan at epoch 0 step 1)" in out
    assert not (tmp_path / "diverged" / "compare.log").exists()
    assert err == (f"effscale compare: no trial completed (why each failed: the reason column of "
                   f"{tmp_path / 'diverged' / 'trials.csv'})\n")


def test_more_gpus_than_the_process_sees_is_refused_by_the_plan_before_anything_is_written(tmp_path, monkeypatch):
    import torch

    from effscale.compare import Comparison
    from effscale.config import load, model_table

    cfg = load("compare", [f"out={tmp_path}", "name=gpus", *TINY, "trainer.devices=2"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"^trainer.devices=2: this process sees 1 GPU from cuda:0 on$"):
        Comparison(cfg, model_table(cfg), "cuda:0").plan()
    assert not (tmp_path / "gpus").exists()


@pytest.mark.parametrize("sweep, baseline", [("table3_mobilenetv2", "mobilenet_v2"), ("table3_resnet", "resnet18")])
def test_table3_presets_compare_every_dimension_of_their_baseline(sweep, baseline):
    from effscale.config import compose, to_dict

    cfg = to_dict(compose("compare", [f"+sweep={sweep}"]))
    assert (cfg["name"], cfg["baseline"]["name"]) == (sweep, baseline)
    assert cfg["compare"]["strategies"] == ["compound", "width", "depth", "resolution"]
    assert cfg["compare"]["phis"] == [0, 1, 2] and cfg["compare"]["seeds"] == 3
    assert (cfg["scale"]["alpha"], cfg["scale"]["beta"], cfg["scale"]["gamma"]) == (1.2, 1.1, 1.15)


def test_a_strategy_or_phi_given_twice_is_planned_once(tmp_path):
    from effscale.compare import Comparison
    from effscale.config import load, model_table

    cfg = load("compare", [f"out={tmp_path}", "name=twice", *TINY, "compare.strategies=[width,compound,width]",
                           "compare.phis=[1,0,1.0]"])
    run = Comparison(cfg, model_table(cfg), "cpu")
    assert (run.strategies, run.phis) == (["width", "compound"], [1.0, 0.0])
    assert sorted((m.strategy, m.phi) for m in run.plan()) == [("baseline", 0), ("compound", 1), ("width", 1)]
