"""`effscale search` end to end on tiny settings: the results table, budgets, failures and resuming."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings

import optuna
import pandas as pd
import pytest

from conftest import REPO, run_cli, running_after_a_complete, wait_for
from effscale import results
from effscale.commands import search
from effscale.errors import UserError

# A tiny sweep: B0 at half width on 40 px procedural images (where the measured MACs of most grid
# points land near 2x), a 3x3 grid, one batch of one epoch per trial, one thread.
TINY = ["scale.width=0.5", "data.resolution=40", "data.train_size=64", "data.val_size=32", "data.test_size=32",
        "data.batch_size=32", "trainer.max_epochs=1", "trainer.threads=1", "trainer.progress=false",
        "search.grid={alpha:[1.0,1.2],beta:[1.0,1.2],step:0.1}", "budget.macs_tolerance=0.15",
        "search.extra_seeds=0", "logger=csv"]


def overrides(*extra):
    """TINY with `extra` overrides replacing those of the same key (Hydra refuses a key twice)."""
    merged = dict(o.split("=", 1) for o in TINY)
    merged.update(o.split("=", 1) for o in extra)
    return [f"{k}={v}" for k, v in merged.items()]


def tiny_search(tmp_path, *extra, name="tiny"):
    search(overrides(f"out={tmp_path}", f"name={name}", *extra))
    return results.read_trials(tmp_path / name)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    search(overrides(f"out={out}", "name=tiny", "search.top_k=1", "search.extra_seeds=1"))
    return out / "tiny", results.read_trials(out / "tiny")


def test_a_table_copied_without_its_study_is_set_aside_not_ranked_with_the_new_studys_trials(tiny_table, tmp_path,
                                                                                                capsys):
    sweep, table = tiny_table  # seeds 0 and 1 (extra_seeds=1); the search below trains seed 0 only
    compared = table.iloc[[0]].assign(point="compare_phi0_a1.2_b1.1_g1.15", strategy="baseline", phi=0)
    shutil.copytree(sweep / "logs", tmp_path / "copied" / "logs")
    results.write_trials(pd.concat([table, compared]), tmp_path / "copied")
    capsys.readouterr()
    new = tiny_search(tmp_path, name="copied")
    [aside] = (tmp_path / "copied").glob("trials.before-*.csv")
    [logs_aside] = (tmp_path / "copied" / "logs").glob("before-*")
    out = capsys.readouterr().out
    assert f"held {len(table)} search rows the new study did not train (a copied folder, or a deleted study): " \
           f"moved to {aside}" in out
    assert f"the logs of {len(list((sweep / 'logs').glob('trial_*')))} trial(s) of the earlier study: moved to " \
           f"{logs_aside}" in out
    # The new study's trial 0 has a metrics file of its own, not the end of the old trial 0's.
    old_metrics = (sweep / "logs" / "trial_0" / "metrics.csv").read_text()
    assert (logs_aside / "trial_0" / "metrics.csv").read_text() == old_metrics
    new_metrics = (tmp_path / "copied" / "logs" / "trial_0" / "metrics.csv").read_text()
    assert len(new_metrics.splitlines()) == len(old_metrics.splitlines())
    assert len(results.read_trials(aside)) == len(table) + 1
    searched = new[~results.from_compare(new)]
    assert set(searched["seed"]) == {0} and len(searched) == len(table[table["seed"] == 0])
    assert new[results.from_compare(new)]["point"].tolist() == ["compare_phi0_a1.2_b1.1_g1.15"]


def test_table_has_one_row_per_grid_point_and_seed_with_contract_columns(tiny_table):
    sweep, table = tiny_table
    assert set(results.CONTRACT) <= set(table.columns)
    first_seed = table[table["seed"] == 0]
    assert len(first_seed) == first_seed["point"].nunique() == 9  # α, β ∈ {1.0, 1.1, 1.2}
    assert not table.duplicated(["point", "seed", "strategy"]).any()
    assert set(table["state"]) <= set(results.STATES)
    trained = table[table["state"] == "COMPLETE"]
    assert len(trained) >= 3 and trained["val_acc"].between(0, 1).all() and (trained["train_seconds"] > 0).all()
    assert set(trained["device"]) == {"cpu"} and set(trained["precision"]) == {"32-true"}  # what each trained with
    assert table.loc[table["state"] == "INFEASIBLE", "precision"].isna().all()
    # the best seed-0 point was trained again with seed 1
    best = trained[trained["seed"] == 0].sort_values("val_acc", ascending=False).iloc[0]["point"]
    assert set(trained.loc[trained["point"] == best, "seed"]) == {0, 1}
    assert (sweep / "study.db").exists() and (sweep / "logs").is_dir()


def test_every_trained_point_keeps_the_compound_constraint_and_the_macs_budget(tiny_table):
    _, table = tiny_table
    trained = table[table["state"] != "INFEASIBLE"]
    constraint = trained["alpha"] * trained["beta"] ** 2 * trained["gamma"] ** 2
    assert ((constraint / 2 - 1).abs() <= 0.05).all()  # paper eq. 3, grid tolerance 5 %
    assert ((trained["macs_ratio"] / 2 - 1).abs() <= 0.15).all()
    assert trained["feasible"].all()
    outside = table[table["state"] == "INFEASIBLE"]
    assert len(outside) and ((outside["macs_ratio"] / 2 - 1).abs() > 0.15).all()
    assert outside["reason"].str.contains("MACs ratio").all()


def test_study_records_each_trial_point_seed_and_constraints(tiny_table):
    sweep, table = tiny_table
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{sweep / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == (table["state"] == "COMPLETE").sum()
    feasible = table.loc[table["feasible"], "point"].nunique()
    assert {t.system_attrs["grid_id"] for t in done} == set(range(feasible))  # a grid over the feasible set
    for t in done:
        assert t.params["point"] == t.user_attrs["point"]
        assert "macs_ratio" in t.constraints and all(c <= 0 for c in t.constraints.values())  # <= 0: feasible
        row = table[(table["point"] == t.user_attrs["point"]) & (table["seed"] == t.user_attrs["seed"])]
        assert row["trial"].item() == t.number and row["val_acc"].item() == pytest.approx(t.value)


def test_budget_excludes_points_and_never_trains_them(tmp_path):
    table = tiny_search(tmp_path, "budget.max_params=1800000")
    over = table[table["params"] > 1_800_000]
    assert len(over) and (over["state"] == "INFEASIBLE").all() and not over["feasible"].any()
    assert over["train_seconds"].isna().all() and over["val_acc"].isna().all()
    assert over["reason"].str.contains("> budget.max_params=1,800,000").all()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny' / 'study.db'}")
    assert not {t.user_attrs["point"] for t in study.trials} & set(over["point"])


def test_budget_below_the_baseline_is_one_line_and_exit_2(tmp_path):
    out = run_cli("search", "budget.max_params=1000", f"out={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("effscale search: budget.max_params=1000 is below the baseline's own "
                                  "4,020,358 params")
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("kind", ["asha", "median"])
def test_min_epochs_is_the_first_epoch_a_pruner_may_stop_a_trial_after(kind):
    from effscale.search import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner(kind, max_epochs=9, min_epochs=3))
    for accuracy in (0.6, 0.7, 0.8, 0.9):  # each better than the ones before, then one far behind them all
        trial = study.ask()
        for epoch in range(1, 10):
            trial.report(accuracy, epoch)
            assert not trial.should_prune()  # ASHA records a trial at a rung when it asks
        study.tell(trial, accuracy)
    trial = study.ask()
    stopped = [epoch for epoch in range(1, 10) if (trial.report(0.1, epoch), trial.should_prune())[1]]
    assert stopped and stopped[0] == 3  # not after epochs 1 or 2, though behind there too


def test_unknown_baseline_is_one_line_and_exit_2(tmp_path):
    out = run_cli("search", "baseline=nope", f"out={tmp_path}")
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "baseline=nope: no such option" in out.stderr


@pytest.mark.parametrize("args, needle", [
    (["search=nope"], "search=nope: no such option"),
    (["search.sampler=random"], "search.sampler=random: expected grid or tpe"),
    (["search.pruner=early"], "search.pruner=early: expected none, median, asha or hyperband"),
    (["search.pruner=asha", "search.reduction_factor=1"],
     "search.reduction_factor: expected an integer of at least 2, got 1"),
    (["search.pruner=asha", "search.min_epochs=3"],
     "search.min_epochs: expected an integer of at least 1 and below trainer.max_epochs=1, got 3"),
    (["logger=nope"], "logger=nope: no such option"),
    (["search.grid.step=0.5", "search.grid.gamma_values=[1.05]", "search.grid.tolerance=0.01"],
     "search.grid: no (alpha, beta, gamma) in the grid"),
    (["search=tpe", "search.workers=2"], "search.sampler=tpe: workers share a grid search only"),
])
def test_bad_search_settings_are_user_errors_before_anything_is_written(args, needle, tmp_path):
    with pytest.raises(UserError, match=re.escape(needle)):
        search(overrides(f"out={tmp_path}", *args))
    assert not any(tmp_path.iterdir())


def test_rerun_resumes_without_training_again(tmp_path, capsys):
    first = tiny_search(tmp_path)
    capsys.readouterr()
    again = tiny_search(tmp_path)
    trained = (first["state"] == "COMPLETE").sum()
    assert f"{trained} trials already complete, 0 to run" in capsys.readouterr().out
    pd.testing.assert_frame_equal(first, again)


def test_a_cut_off_table_is_refused_and_once_moved_aside_is_written_again_from_the_study(tmp_path):
    first = tiny_search(tmp_path)
    table = tmp_path / "tiny" / "trials.csv"
    table.write_text(table.read_text()[:300])  # a copy cut short
    with pytest.raises(UserError, match="row 1 has .* fields .*; once it is moved aside, the search's command "
                                        "writes it again from its study"):
        tiny_search(tmp_path)
    table.rename(tmp_path / "tiny" / "trials.cut.csv")
    pd.testing.assert_frame_equal(first, tiny_search(tmp_path))  # nothing trained again, no row lost


def test_a_sweep_rerun_with_another_seed_keeps_one_row_per_point_over_the_budget(tmp_path, monkeypatch):
    from effscale import train

    def fit(table, data, recipe, seed, **kwargs):
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "train_seconds": 0.1,
                "val_history": [0.5], "reason": None}

    monkeypatch.setattr(train, "fit_candidate", fit)
    first = tiny_search(tmp_path)
    again = tiny_search(tmp_path, "seed=1")
    over = again[again["state"] == "INFEASIBLE"]
    assert len(over) == (first["state"] == "INFEASIBLE").sum() > 0 and set(over["seed"]) == {0}
    assert set(again.loc[again["state"] == "COMPLETE", "seed"]) == {0, 1}


def test_resuming_with_other_training_settings_is_refused_and_runtime_settings_are_not(tmp_path, capsys):
    first = tiny_search(tmp_path)
    recorded = (tmp_path / "tiny" / "settings.json").read_text()
    assert '"max_epochs": 1' in recorded and '"threads"' not in recorded
    # Threads, the progress bar and more seeds change no finished trial ...
    capsys.readouterr()
    tiny_search(tmp_path, "trainer.threads=2", "trainer.progress=true", "search.extra_seeds=1")
    assert "trials already complete" in capsys.readouterr().out
    first = results.read_trials(tmp_path / "tiny")
    # ... a longer recipe or other data would: the finished trials are not kept beside them.
    with pytest.raises(UserError, match=re.escape(
            f"{tmp_path / 'tiny'}: its search trials were trained with other settings (data.val_size 32, now 16; "
            "trainer.max_epochs 1, now 2); run it with those, or start another sweep with name=…")):
        tiny_search(tmp_path, "trainer.max_epochs=2", "data.val_size=16")
    # ... and the study's points are its grid: a wider budget would change Optuna's `point` parameter.
    with pytest.raises(UserError, match=r"its study has 4 points within the budget, this run 8 \(4 new, 0 gone, "):
        tiny_search(tmp_path, "budget.macs_tolerance=0.3")
    pd.testing.assert_frame_equal(first, results.read_trials(tmp_path / "tiny"))
    assert (tmp_path / "tiny" / "settings.json").read_text() == recorded
    # Without the record, the settings of the trained trials are unknown: not taken from this run.
    (tmp_path / "tiny" / "settings.json").unlink()
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'tiny' / 'settings.json'}: no record of the settings "
                                                  "the sweep's search trials were trained with (missing); put the")):
        tiny_search(tmp_path, "trainer.max_epochs=2")
    assert not (tmp_path / "tiny" / "settings.json").exists()


# Five grid points on 12 px inputs that build two networks: α = 1.6, 1.7 and 1.8 round to the same
# depth and to 13 px, α = 1.9 and 2.0 to the same depth and 12 px.
REPEATS = ["scale.depth=0.5", "data.resolution=12", "search.grid={alpha:[1.6,2.0],beta:[1.0,1.0],step:0.1}",
           "budget.macs_tolerance=1.0", "search.top_k=2", "search.extra_seeds=1"]
SAME_AS = {"a1.7_b1_g1.0847": "a1.6_b1_g1.118", "a1.8_b1_g1.0541": "a1.6_b1_g1.118", "a2_b1_g1": "a1.9_b1_g1.026"}


@pytest.mark.parametrize("workers", [1, 2])
def test_points_that_build_the_same_network_train_it_once(tmp_path, capsys, workers):
    table = tiny_search(tmp_path, *REPEATS, f"search.workers={workers}")
    out = capsys.readouterr().out
    assert "5 within budget" in out and "3 of them the same network as another (trained once)" in out
    seed = table["seed"].min()
    first = table[table["seed"] == seed].set_index("point")
    assert len(first) == 5 and (first["state"] == "COMPLETE").all()
    assert first["same_as"].dropna().to_dict() == SAME_AS
    for point, same in SAME_AS.items():
        assert first.loc[point, "val_acc"] == first.loc[same, "val_acc"] and first.loc[point, "train_seconds"] == 0
        assert (first.loc[point, "device"], first.loc[point, "precision"]) == ("cpu", "32-true")
    # Extra seeds go to the two best networks, not to a network and its repeat; four trainings in all.
    assert set(table.loc[table["seed"] != seed, "point"]) == set(SAME_AS.values())
    assert len(list((tmp_path / "tiny" / "logs").iterdir())) == 4
    assert not (tmp_path / "tiny" / "search.log").exists()  # nothing went wrong: no log of what did
    assert sorted(results.seed_summary(table)["point"]) == sorted(set(SAME_AS.values()))


def test_a_search_waits_for_the_network_another_search_is_training_rather_than_train_it_too(tmp_path, monkeypatch):
    import threading

    import effscale.search
    import effscale.train as train
    from effscale.claims import claim

    trained = []

    def fit(table, datamodule, recipe, **kw):
        trained.append(table["resolution"])
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.4, "epochs": 1, "train_seconds": 1.0,
                "val_history": [0.5], "reason": None}

    monkeypatch.setattr(train, "fit_candidate", fit)
    monkeypatch.setattr(effscale.search, "WAIT_S", 0.1, raising=False)
    # Another search (one worker) on the same sweep is training α = 1.6, the 13 px network of α = 1.7 and 1.8.
    other = planned(tmp_path, *REPEATS, "search.extra_seeds=0")
    job = next(j for j in other.first_jobs() if j.candidate.point == "a1.6_b1_g1.118")
    running = other.begin(lambda: claim(other, job, other.retry_below))
    other.study._storage.set_trial_user_attr(running._trial_id, "pid", os.getppid())  # a live process, not this one
    errors = []

    def other_finishes():
        try:
            other.train(running, job, "[other]")
        except Exception as exc:  # noqa: BLE001  (said by the assertion below)
            errors.append(exc)

    finish = threading.Timer(1.0, other_finishes)
    finish.start()
    try:
        table = tiny_search(tmp_path, *REPEATS, "search.extra_seeds=0").set_index("point")
    finally:
        finish.join()
    assert not errors
    assert sorted(trained) == [12, 13]  # each network once: 12 px here, 13 px by the other search
    assert (table["state"] == "COMPLETE").all() and table["same_as"].dropna().to_dict() == SAME_AS


def test_repeats_of_a_failed_network_fail_with_it_and_run_again_with_it(tmp_path, monkeypatch):
    import effscale.train as train

    real, calls = train.fit_candidate, []

    def fit(table, datamodule, recipe, **kw):
        calls.append(table["resolution"])
        if table["resolution"] == 13 and len(calls) < 3:
            raise RuntimeError("boom at 13 px")
        return real(table, datamodule, recipe, **kw)

    monkeypatch.setattr(train, "fit_candidate", fit)
    table = tiny_search(tmp_path, *REPEATS, "search.extra_seeds=0").set_index("point")
    assert calls == [13, 12]  # each network once
    thirteen = ["a1.6_b1_g1.118", "a1.7_b1_g1.0847", "a1.8_b1_g1.0541"]  # one network at 13 px
    assert (table.loc[thirteen, "state"] == "FAIL").all()
    assert (table.loc[thirteen, "reason"] == "RuntimeError: boom at 13 px").all()
    table = tiny_search(tmp_path, *REPEATS, "search.extra_seeds=0", "search.retry_failed=true").set_index("point")
    assert calls == [13, 12, 13]  # the failed network again, once, and its repeats record it
    assert (table["state"] == "COMPLETE").all() and table["same_as"].dropna().to_dict() == SAME_AS


def test_tpe_trains_each_network_once_whichever_of_its_points_it_proposes(tmp_path):
    table = tiny_search(tmp_path, *REPEATS, "search=tpe", "search.n_trials=2", "search.extra_seeds=0", name="tpe")
    trained = table[table["same_as"].isna()]
    assert sorted(trained["resolution"]) == [12, 13] and (trained["state"] == "COMPLETE").all()
    assert len(list((tmp_path / "tpe" / "logs").iterdir())) == 2
    assert set(table["same_as"].dropna()) <= set(trained["point"])


@pytest.mark.slow  # ~50 s; the default suite has test_reliability.py's Ctrl-C, kill -9 and rerun
def test_killed_search_resumes_only_the_unfinished_points(tmp_path):
    """SIGKILL a search in the middle of a trial, run it again: the finished trials are kept as they
    were, the killed one is marked stale and trained again, and every point has exactly one row."""
    storage = f"sqlite:///{tmp_path / 'tiny' / 'study.db'}"
    slow = ["data.train_size=512", "trainer.max_epochs=2"]  # long enough to be caught mid-trial
    command = [sys.executable, "-m", "effscale.cli", "search", *overrides(*slow, f"out={tmp_path}", "name=tiny")]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: running_after_a_complete(storage, "tiny"), 300, "a second trial", proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = optuna.load_study(study_name="tiny", storage=storage).trials  # as the kill left them
    complete_before = {t.number: t.user_attrs["point"] for t in before if t.state.name == "COMPLETE"}
    killed = [t.number for t in before if t.state.name == "RUNNING"]
    assert complete_before and killed

    table = tiny_search(tmp_path, *slow)
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert all(trials[n].user_attrs.get("stale") and trials[n].state.name == "FAIL" for n in killed)
    for number, point in complete_before.items():  # kept, not retrained
        assert trials[number].state.name == "COMPLETE" and trials[number].user_attrs["point"] == point
    completes = [t.user_attrs["point"] for t in trials if t.state.name == "COMPLETE"]
    assert len(completes) == len(set(completes))  # nothing finished ran twice
    feasible = table[table["feasible"]]
    assert (feasible["state"] == "COMPLETE").all() and set(feasible["point"]) == set(completes)
    assert not table.duplicated(["point", "seed", "strategy"]).any()


def test_a_trial_another_worker_marked_stale_meanwhile_is_left_to_it_and_the_sweep_goes_on(tmp_path, monkeypatch,
                                                                                          capsys):
    import effscale.train as train

    real, taken = train.fit_candidate, []

    def fit(table, datamodule, recipe, **kw):
        if not taken:  # another worker marks the first trial stale while it trains
            study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny' / 'study.db'}")
            [running] = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            study._storage.set_trial_user_attr(running._trial_id, "stale", True)
            study.tell(running.number, state=optuna.trial.TrialState.FAIL)
            taken.append(running.user_attrs["point"])
        return real(table, datamodule, recipe, **kw)

    monkeypatch.setattr(train, "fit_candidate", fit)
    table = tiny_search(tmp_path)
    assert "marked stale by another worker meanwhile; its point trains there again" in capsys.readouterr().out
    assert taken[0] not in set(table.loc[table["state"] == "COMPLETE", "point"])  # no row claims its result
    monkeypatch.setattr(train, "fit_candidate", real)
    table = tiny_search(tmp_path)  # the next launch trains it
    assert (table.loc[table["feasible"], "state"] == "COMPLETE").all() and taken[0] in set(table["point"])


def test_diverging_trial_fails_with_a_reason_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import effscale.train as train

    real = train.fit_candidate

    def fit(table, datamodule, recipe, **kw):
        if table["resolution"] == 47:  # two of the grid's points; the rest train normally
            recipe = {**recipe, "lr": 1e30, "limit_train_batches": 2}
        return real(table, datamodule, recipe, **kw)

    monkeypatch.setattr(train, "fit_candidate", fit)
    table = tiny_search(tmp_path, "data.train_size=96")
    failed = table[table["state"] == "FAIL"]
    # On CUDA the loss is read every 16 steps and at the epoch's end: "loss is not finite in the last steps".
    assert len(failed) >= 1 and failed["reason"].str.contains("loss is (?:nan|inf|not finite)").all()
    assert failed["val_acc"].isna().all()
    assert (table["state"] == "COMPLETE").sum() >= 1


def test_exception_in_a_trial_is_one_reason_and_a_logged_traceback(tmp_path, monkeypatch):
    import effscale.train as train

    real = train.fit_candidate

    def fit(table, datamodule, recipe, **kw):
        if table["resolution"] == 54:
            raise RuntimeError("boom in the trial")
        return real(table, datamodule, recipe, **kw)

    monkeypatch.setattr(train, "fit_candidate", fit)
    table = tiny_search(tmp_path)
    failed = table[table["state"] == "FAIL"]
    assert list(failed["reason"]) == ["RuntimeError: boom in the trial"]
    assert (table["state"] == "COMPLETE").sum() >= 2
    log = (tmp_path / "tiny" / "search.log").read_text()
    assert "Traceback" in log and "boom in the trial" in log


def test_pruned_trials_stop_after_the_reported_epoch_and_are_rows(tmp_path, monkeypatch):
    # Whether Optuna's median rule fires on tiny data is luck; that our callback stops the trial when
    # it does, and records it, is not.
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    table = tiny_search(tmp_path, "search.pruner=median", "trainer.max_epochs=3")
    trained = table[table["feasible"]]
    assert (trained["state"] == "PRUNED").all() and (trained["epochs"] == 1).all()
    assert trained["reason"].eq("pruned after epoch 1").all()


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path, monkeypatch):
    # Stopping there saves nothing and would drop a trained point from the ranking (ASHA's rungs at
    # epochs 1 and 3 with the quick sweep's 3 epochs).
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    table = tiny_search(tmp_path, "search.pruner=asha", "trainer.max_epochs=1")
    trained = table[table["feasible"]]
    assert len(trained) > 1 and (trained["state"] == "COMPLETE").all() and (trained["epochs"] == 1).all()


def test_an_extra_seed_of_a_leading_point_is_trained_in_full_never_pruned(tmp_path, monkeypatch):
    # The pruner would stop every trial but the first; the first point leads, and its extra seed must
    # finish: a pruned seed would leave the point ranked on its one lucky seed.
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number > 0)
    table = tiny_search(tmp_path, "search.pruner=median", "trainer.max_epochs=2", "search.top_k=1",
                        "search.extra_seeds=1")
    trained = table[table["feasible"]]
    leader = trained.loc[trained["trial"] == 0, "point"].item()
    seeds = trained[trained["point"] == leader].sort_values("seed")
    assert list(seeds["state"]) == ["COMPLETE", "COMPLETE"] and list(seeds["epochs"]) == [2, 2]
    assert (trained[trained["point"] != leader]["state"] == "PRUNED").all()


def test_asha_stops_a_trial_at_epochs_1_3_9_unless_it_is_in_the_best_third_so_far():
    from effscale.search import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner("asha", max_epochs=9))

    def epochs_run(accuracy_after):  # a trial reports after every epoch (1-based) until it is pruned
        trial = study.ask()
        for epoch in range(1, 10):
            trial.report(accuracy_after(epoch), epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return epoch
        study.tell(trial, accuracy_after(9))
        return 9

    assert epochs_run(lambda e: 0.50 + 0.01 * e) == 9  # the first trial has no one to lose to
    assert epochs_run(lambda e: 0.40) == 1  # behind after one epoch: stopped there
    assert epochs_run(lambda e: 0.55 + 0.01 * e) == 9  # ahead at epochs 1 and 3
    assert epochs_run(lambda e: 0.60 if e < 3 else 0.45) == 3  # ahead at epoch 1, behind at 3
    # Five trials have reached epoch 1 now; only the best third of them (one) goes on: second place stops.
    assert epochs_run(lambda e: 0.58) == 1


def test_tpe_trains_n_trials_distinct_feasible_points(tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "`constraints_func`", FutureWarning)  # deprecated in Optuna 5
        table = tiny_search(tmp_path, "search=tpe", "search.n_trials=3", name="tpe")
    trained = table[table["state"] == "COMPLETE"]
    assert len(trained) == trained["point"].nunique() == 3
    assert trained["feasible"].all()
    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{tmp_path / 'tpe' / 'study.db'}")
    ran = [t for t in study.trials if t.state.name == "COMPLETE" and t.user_attrs.get("repeat_of") is None]
    assert len(ran) == 3 and all(0 >= max(t.constraints.values()) for t in ran)  # what TPE reads


def test_journal_storage_url(tmp_path):
    journal = tmp_path / "shared" / "study.log"
    table = tiny_search(tmp_path, f"search.storage=journal://{journal}")
    assert journal.exists() and not (tmp_path / "tiny" / "study.db").exists()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == (table["state"] == "COMPLETE").sum()


def test_wandb_that_cannot_start_a_run_is_one_line_and_leaves_no_trial_running(tmp_path, monkeypatch):
    import wandb

    def init(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(UserError, match=r"^logger=wandb: W&B could not start a run \(No API key configured\. "
                                        r"Use `wandb login` to log in\.\); WANDB_MODE=offline keeps runs"):
        tiny_search(tmp_path, "logger=wandb")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny' / 'study.db'}")
    assert [t.user_attrs.get("stale") for t in study.trials] == [True]


def test_a_sweep_stopped_before_any_trial_finished_takes_other_settings_and_a_settings_file_not_an_object_is_one_line(
        tmp_path, monkeypatch):
    import effscale.train

    def stopped(*args, **kwargs):  # a corrupt image found by the first trial, a Ctrl-C: nothing finished
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(effscale.train, "fit_candidate", stopped)
        with pytest.raises(KeyboardInterrupt):
            tiny_search(tmp_path)
    assert (tmp_path / "tiny" / "settings.json").exists()
    assert set(results.read_trials(tmp_path / "tiny")["state"]) == {"INFEASIBLE"}  # the budget's, no trial's
    table = tiny_search(tmp_path, "trainer.max_epochs=2")  # the fixed run is not refused as "other settings"
    assert (table["state"] == "COMPLETE").any() and set(table["epochs"].dropna()) == {2}
    assert '"max_epochs": 2' in (tmp_path / "tiny" / "settings.json").read_text()
    with pytest.raises(UserError, match="its search trials were trained with other settings"):
        tiny_search(tmp_path, "trainer.max_epochs=1")  # now there are trials to keep apart
    (tmp_path / "tiny" / "settings.json").write_text("null")
    with pytest.raises(UserError, match=r"settings.json: expected a JSON object of settings by command, got 'None'"):
        tiny_search(tmp_path, "trainer.max_epochs=2")


def test_the_same_sweep_on_another_image_folder_is_refused_by_its_classes(tmp_path, capsys):
    import json

    from PIL import Image

    for root, classes in (("three", "abc"), ("two", "ab")):
        for c in classes:
            (tmp_path / root / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (16, 16), (40 * i, 200 * (c == "a"), 0)).save(tmp_path / root / c / f"{i}.png")
    tiny = [o for o in TINY if not o.startswith("data.")] + ["data=imagefolder", "data.resolution=40",
                                                            "data.batch_size=8", f"out={tmp_path}", "name=swap"]
    search([*tiny, f"data.root={tmp_path / 'three'}"])
    with pytest.raises(UserError, match=re.escape("(data.classes ['a', 'b', 'c'], now ['a', 'b']); ")):
        search([*tiny, f"data.root={tmp_path / 'two'}"])  # data.root itself is where, not what: not recorded
    # A sweep recorded before the classes were is not refused for lacking them.
    path = tmp_path / "swap" / "settings.json"
    recorded = json.loads(path.read_text())
    del recorded["search"]["data"]["classes"]
    path.write_text(json.dumps(recorded))
    capsys.readouterr()
    search([*tiny, f"data.root={tmp_path / 'three'}"])
    assert "to run" in capsys.readouterr().out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_search_whose_output_closes_stops_with_one_line_and_resumes(tmp_path, workers):
    # `effscale search | head -1`: the reader ends, the next line printed fails.
    command = [sys.executable, "-m", "effscale.cli", "search", *overrides(f"out={tmp_path}", "name=piped",
                                                                          f"search.workers={workers}")]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        run.stdout.readline()
        run.stdout.close()
        err = run.stderr.read()
    assert run.returncode == 1, err
    lines = [line for line in err.splitlines() if "stopped, its output closed" in line]
    assert lines and len(lines) == len(err.splitlines()) and "Traceback" not in err
    study = optuna.load_study(study_name="piped", storage=f"sqlite:///{tmp_path / 'piped' / 'study.db'}")
    def failed(trials):  # recorded as a failed training, not as a stop (stale) or a lost claim (repeat_of)
        return [t.number for t in trials if t.state.name == "FAIL"
                and not t.user_attrs.get("stale") and t.user_attrs.get("repeat_of") is None]

    assert failed(study.trials) == []
    table = tiny_search(tmp_path, "search.workers=1", name="piped")
    assert failed(study.trials) == []
    assert set(table.loc[table["state"] != "INFEASIBLE", "state"]) == {"COMPLETE"}
    assert not table.duplicated(["point", "seed", "strategy"]).any()


def test_a_budget_nothing_meets_is_said_before_the_data_is_read(tmp_path, monkeypatch):
    from effscale.data import DataModule

    def read(self):
        raise AssertionError("the data was read before the budget was judged")

    monkeypatch.setattr(DataModule, "read", read)  # reading a folder of images may take minutes
    with pytest.raises(UserError, match=r"^budget.max_params=1 is below the baseline's own [\d,]+ params"):
        tiny_search(tmp_path, "budget.max_params=1")
    with pytest.raises(UserError, match=r"^budget: none of the \d+ grid points fits"):
        tiny_search(tmp_path, "budget.macs_tolerance=0.0001")
    assert not (tmp_path / "tiny").exists()


def test_other_settings_are_refused_while_a_trial_is_under_way_and_always_for_a_worker(tmp_path):
    first = planned(tmp_path)  # settings recorded, no trial yet
    with pytest.raises(UserError, match="its search trials were trained with other settings"):
        planned(tmp_path, "trainer.max_epochs=2", new_launch=False)  # a worker of the first launch
    first.study.ask()  # the first launch trains its first trial
    with pytest.raises(UserError, match="its search trials were trained with other settings"):
        planned(tmp_path, "trainer.max_epochs=2")
    # A worker started on its own in a new folder (a job of an array, say) records the settings a
    # launch would; with the record gone and a trial under way, nobody knows them any more.
    alone = planned(tmp_path / "alone", new_launch=False)
    assert '"max_epochs": 1' in (tmp_path / "alone" / "tiny" / "settings.json").read_text()
    alone.study.ask()
    (tmp_path / "alone" / "tiny" / "settings.json").unlink()
    with pytest.raises(UserError, match="settings.json: no record of the settings"):
        planned(tmp_path / "alone", new_launch=False)


def test_a_folder_renamed_with_its_study_resumes_that_study(tmp_path, capsys):
    first = tiny_search(tmp_path)
    (tmp_path / "tiny").rename(tmp_path / "moved")
    capsys.readouterr()
    again = tiny_search(tmp_path, name="moved")
    out = capsys.readouterr().out
    assert f"{tmp_path / 'moved' / 'study.db'} holds study 'tiny' (a folder renamed or copied" in out
    assert "trials already complete, 0 to run" in out
    pd.testing.assert_frame_equal(first, again)
    assert not list((tmp_path / "moved").glob("trials.before-*"))


def test_a_sweep_folder_that_cannot_be_written_in_is_one_line(tmp_path, monkeypatch):
    import types

    from effscale import files

    def denied(dir=None):  # a folder of another user's, read-only to this one (root is never denied)
        raise PermissionError(13, "Permission denied")

    (tmp_path / "tiny").mkdir()
    monkeypatch.setattr(files, "tempfile", types.SimpleNamespace(TemporaryFile=denied))
    with pytest.raises(UserError, match=re.escape(f"out={tmp_path}: cannot write in the sweep folder "
                                                  f"{tmp_path / 'tiny'} (Permission denied)")):
        tiny_search(tmp_path)
    assert list((tmp_path / "tiny").iterdir()) == []


def test_a_refused_run_never_deletes_a_study_it_did_not_create_even_one_not_yet_set_up(tmp_path):
    import sqlite3

    table = tiny_search(tmp_path)
    # The study as another run leaves it between creating it and recording its context there.
    with contextlib.closing(sqlite3.connect(tmp_path / "tiny" / "study.db")) as db, db:
        db.execute("DELETE FROM study_user_attributes")
    with pytest.raises(UserError, match="its search trials were trained with other settings"):
        tiny_search(tmp_path, "trainer.max_epochs=2")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny' / 'study.db'}")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == (table["state"] == "COMPLETE").sum() > 0
    assert results.read_trials(tmp_path / "tiny").equals(table)


def test_another_grid_is_refused_by_a_study_that_has_no_trial_yet(tmp_path):
    # Two launches started together: the first has set the study up and not yet created a trial.
    planned(tmp_path)
    with pytest.raises(UserError, match=r"its study has 4 points within the budget, this run 1 \(1 new, 4 gone, "):
        planned(tmp_path, "search.grid.alpha=[1.85,1.9]")


def test_a_trials_wandb_run_records_its_point_data_scale_and_recipe(tmp_path, monkeypatch):
    import wandb

    asked = []

    def init(**kwargs):  # what the run would be started with; then no run, as W&B without a login
        asked.append(kwargs)
        raise wandb.errors.UsageError("no run here")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(UserError):
        tiny_search(tmp_path, "logger=wandb")
    [run] = asked
    config = run["config"]
    assert (run["group"], run["job_type"], run["name"]) == ("tiny", "compound", "trial_0")
    assert {"point", "alpha", "beta", "gamma", "resolution", "macs_ratio", "seed"} <= set(config)
    assert config["data"]["train_size"] == 64 and config["data"]["name"] == "procedural"
    assert "root" not in config["data"] and "threads" not in config["data"]
    assert config["scale"]["width"] == 0.5 and config["trainer"]["max_epochs"] == 1


class _Summary(dict):
    """W&B's run summary as close_loggers uses it (keys, del, update)."""


class _Run:
    def __init__(self, logged):
        self.summary, self.exit_code = _Summary(logged), None

    def finish(self, exit_code=None):
        assert self.exit_code is None, "finished twice"
        self.exit_code = exit_code or 0


class WandbLogger:  # close_loggers tells a W&B logger by its class name
    def __init__(self, logged):
        self.experiment = _Run(logged)


def test_a_wandb_run_ends_with_the_rows_numbers_or_as_interrupted_when_its_training_stops_the_command():
    from effscale.loggers import close_loggers, closed_if_stopped

    failed = WandbLogger({"val_acc": 0.1, "epoch": 0})  # what Lightning logged before the loss diverged
    close_loggers([failed], {"val_acc": None, "test_acc": None, "state": "FAIL", "reason": "loss is nan"})
    assert failed.experiment.summary == {"epoch": 0, "state": "FAIL", "reason": "loss is nan"}
    assert failed.experiment.exit_code == 0
    stopped = WandbLogger({"val_acc": 0.3})
    with pytest.raises(KeyboardInterrupt), closed_if_stopped([stopped]):
        raise KeyboardInterrupt
    assert stopped.experiment.summary == {"val_acc": 0.3, "state": "INTERRUPTED"}
    assert stopped.experiment.exit_code == 1
    caught = WandbLogger({})
    with closed_if_stopped([caught]):
        try:
            raise RuntimeError("one broken trial, recorded FAIL")
        except RuntimeError:
            pass
    assert caught.experiment.exit_code is None  # left for close_loggers


def test_a_trials_log_folder_left_by_an_attempt_that_never_finished_is_started_afresh(tmp_path):
    from effscale.loggers import trial_loggers

    folder = tmp_path / "logs" / "compare_0_baseline_phi0_s0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,step,val_acc\n0,10,0.245\n")
    [csv_logger] = trial_loggers("csv", tmp_path, folder.name, group="g", job_type="baseline", config={})
    csv_logger.log_metrics({"val_acc": 0.355, "epoch": 0}, step=10)
    csv_logger.finalize("success")
    assert "0.245" not in (folder / "metrics.csv").read_text() and "0.355" in (folder / "metrics.csv").read_text()


def test_wandb_writes_its_own_logs_in_the_sweep_folder(tmp_path, monkeypatch):
    from effscale import loggers

    monkeypatch.setenv("WANDB_CACHE_DIR", "unset")  # so that the test's end restores what was there
    monkeypatch.delenv("WANDB_CACHE_DIR")
    monkeypatch.setattr(loggers, "_USER_WANDB_CACHE", False)
    for logger in loggers.trial_loggers("wandb", tmp_path, "trial_0", group="g", job_type="grid", config={}):
        logger.finalize("success")
    assert os.environ["WANDB_CACHE_DIR"] == str(tmp_path / "wandb" / ".cache")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
@pytest.mark.parametrize("folder", [True, False])
def test_a_refused_run_removes_the_storage_file_and_folders_it_created(tmp_path, monkeypatch, kind, folder):
    from effscale import train

    monkeypatch.setattr(train, "fit_candidate", lambda *a, **kw: {
        "state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "train_seconds": 0.1,
        "val_history": [0.5], "reason": None})
    tiny_search(tmp_path)
    file = tmp_path / "new" / "sub" / "study.db" if folder else tmp_path / "study.db"
    url = f"journal://{file}" if kind == "journal" else f"sqlite:///{file}"
    with pytest.raises(UserError, match="trainer"):  # the sweep's trials were trained for one epoch
        tiny_search(tmp_path, "trainer.max_epochs=2", f"search.storage={url}")
    assert not (tmp_path / "new").exists() and not file.exists()


@pytest.mark.slow
def test_fashion_mnist_search_learns_well_above_chance(tmp_path, fashion_mnist_dir):
    """The quick sweep's baseline, one grid point, two epochs on 6,000 real Fashion-MNIST images."""
    search(["data=fashion_mnist", f"data.root={fashion_mnist_dir}", "data.resolution=36", "data.train_size=6000",
            "data.val_size=2000", "data.batch_size=64", "scale.width=0.5", "scale.depth=0.5",
            "baseline.dropout=0", "baseline.stochastic_depth=0", "trainer.max_epochs=2", "trainer.threads=1",
            "trainer.progress=false", "search.grid={alpha:[1.0,1.0],beta:[1.4,1.4],step:0.1}",
            "search.extra_seeds=0", "logger=csv", f"out={tmp_path}", "name=fmnist"])
    table = results.read_trials(tmp_path / "fmnist")
    trained = table[table["state"] == "COMPLETE"]
    assert len(trained) == 1 and trained["dataset"].item() == "fashion_mnist"
    assert trained["val_acc"].item() > 0.6 and trained["test_acc"].item() > 0.6  # chance is 0.1


# --- the pieces a sweep's bookkeeping rests on -------------------------------------------------------


def summary_of(*points):
    """A seed summary (best first) from (mean val_acc, std over seeds, seeds) per point."""
    return pd.DataFrame([{"alpha": 1 + i / 10, "beta": 1.0, "gamma": 1.0, "val_acc": acc, "val_std": std,
                          "seeds": seeds} for i, (acc, std, seeds) in enumerate(points)])


def test_seed_noise_pools_the_std_over_points_and_ties_those_within_two_standard_errors():
    import effscale.search as search_module

    close = summary_of((0.80, 0.01, 3), (0.79, 0.02, 2), (0.70, None, 1))
    noise = results.seed_noise(close)
    # pooled by degrees of freedom: σ² = (2·0.01² + 1·0.02²) / 3; margin = 2σ·√(1/3 + 1/2)
    assert noise.sigma == pytest.approx(0.0141421, abs=1e-6) and noise.pooled_from == 2
    assert noise.lead == pytest.approx(0.01) and noise.margin == pytest.approx(0.0258199, abs=1e-6)
    assert noise.within and noise.tied == 1  # 0.70 is 0.10 behind: beyond 2σ·√(1/3 + 1) = 0.0327
    assert "WITHIN NOISE: 1 of the other 2 points cannot be told apart" in search_module.noise_verdict(close)

    apart = summary_of((0.80, 0.01, 3), (0.70, 0.01, 3))
    assert not results.seed_noise(apart).within
    assert search_module.noise_verdict(apart).endswith("better than the runner-up beyond seed noise.")

    alike = summary_of((0.10, 0.0, 2), (0.10, 0.0, 2))  # seeds that change nothing: no noise to judge by
    assert search_module.noise_verdict(alike) == ("noise: unknown, each point trained with several seeds scored "
                                                  "the same with every seed (2 point(s)); the lead over alpha=1.1 "
                                                  "beta=1 gamma=1 is 0.000")

    one_seed_each = summary_of((0.80, None, 1), (0.79, None, 1))
    assert results.seed_noise(one_seed_each) is None
    assert search_module.noise_verdict(one_seed_each).startswith("noise: unknown")


def test_a_trial_is_stale_when_its_process_here_is_gone_or_its_heartbeat_elsewhere_is_old():
    import copy
    import socket
    import time

    from effscale.liveness import fail_stale_trials, is_stale, this_process

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        study = optuna.create_study()
        old = time.time() - 100
        here = this_process()
        for host, pid in [("elsewhere", 1), (socket.gethostname(), dead.pid), (socket.gethostname(), alive.pid)]:
            trial = study.ask()
            for key, value in {"host": host, "pid": pid, "pid_ns": here["pid_ns"], "heartbeat": old}.items():
                trial.set_user_attr(key, value)
        elsewhere, gone, running = study.get_trials(deepcopy=False)
        assert is_stale(elsewhere, 60) and not is_stale(elsewhere, 300)
        assert is_stale(gone, 300)  # this host: the process decides, whatever the heartbeat says
        assert not is_stale(running, 60)
        # Another container with this host name: its pids are not ours to look up, its heartbeat decides.
        gone_there, running_there = copy.deepcopy(gone), copy.deepcopy(running)
        gone_there.user_attrs["pid_ns"] = running_there.user_attrs["pid_ns"] = "pid:[4026532999]"
        assert not is_stale(gone_there, 300) and is_stale(running_there, 60)

        study.enqueue_trial({})  # left WAITING by a process that died between enqueueing and asking
        assert fail_stale_trials(study, 60) == 3
        states = [(t.state.name, t.user_attrs.get("stale")) for t in study.get_trials()]
        assert states == [("FAIL", True), ("FAIL", True), ("RUNNING", None), ("FAIL", True)]
    finally:
        alive.kill()
        alive.wait()


def test_storage_passwords_are_masked_when_printed_and_dropped_when_recorded():
    from effscale.storages import without_password

    url = "postgresql+psycopg://optuna:s3cret@db.cluster:5432/effscale"
    assert without_password(url) == "postgresql+psycopg://optuna:***@db.cluster:5432/effscale"
    assert without_password(url, masked=False) == "postgresql+psycopg://optuna@db.cluster:5432/effscale"
    assert without_password("postgresql://u:p/ss@host/db") == "postgresql://u:***@host/db"  # a "/" in it
    assert without_password("postgresql://u:p@ss@host:x/db") == "postgresql://u:***@host:x/db"  # no URL SQLAlchemy reads
    assert without_password("postgresql://u:p@ss@host/db", masked=False) == "postgresql://u@host/db"  # "@" in it
    assert without_password("postgresql://u:pw@host/db?sslmode=require&x=a@b") == \
        "postgresql://u:***@host/db?sslmode=require&x=a@b"
    assert without_password("postgresql://u:p?ss@host/db") == "postgresql://u:***@host/db"  # a "?" in it
    assert without_password("postgresql://u:p?ss@host/db", masked=False) == "postgresql://u@host/db"
    assert without_password("postgresql://host/db?password=s3cret&sslmode=require") == \
        "postgresql://host/db?password=***&sslmode=require"
    assert without_password("postgresql://host/db?sslmode=require&password=s3cret", masked=False) == \
        "postgresql://host/db?sslmode=require"
    for unchanged in ("journal:///shared/study.log", "sqlite:///results/quick/study.db", "postgresql://host/db"):
        assert without_password(unchanged) == unchanged == without_password(unchanged, masked=False)


def planned(tmp_path, *extra, new_launch=True):
    """A Search of the tiny sweep, planned and opened as `effscale search` (or one of its workers) does."""
    from effscale.config import load, model_table
    from effscale.search import Search

    cfg = load("search", overrides(f"out={tmp_path}", "name=tiny", *extra))
    run = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)
    run.plan()
    run.open(new_launch=new_launch)
    return run


def test_latency_is_measured_once_per_sweep_and_later_processes_judge_the_budget_with_it(tmp_path, monkeypatch):
    import dataclasses

    import effscale.search as search_module

    real = search_module.measure_tables

    def timed_at(ms):  # every candidate's latency as given, the rest measured as usual
        def measure(tables, build, **options):
            return [dataclasses.replace(m, latency_ms=ms) for m in real(tables, build, **{**options, "latency": False})]
        return measure

    real_one = search_module.measure_table

    def baseline_at(ms):
        def measure(table, build, **options):
            return dataclasses.replace(real_one(table, build, **{**options, "latency": False}), latency_ms=ms)
        return measure

    budget = "budget.max_latency_ms=1000"
    monkeypatch.setattr(search_module, "measure_tables", timed_at(5.0))
    monkeypatch.setattr(search_module, "measure_table", baseline_at(2.0))
    first = planned(tmp_path, budget)
    assert len(first.feasible) == 4 and "latency and peak memory as measured on cpu" in first.describe_plan()
    # Another machine, slower: its own numbers would put the baseline itself over the budget.
    monkeypatch.setattr(search_module, "measure_tables", timed_at(5000.0))
    monkeypatch.setattr(search_module, "measure_table", baseline_at(3000.0))
    later = planned(tmp_path, budget, new_launch=False)  # a worker of the sweep: no "points gone" error
    assert [c.point for c in later.feasible] == [c.point for c in first.feasible]
    assert {c.cost.latency_ms for c in later.candidates} == {5.0} and later.base_cost.latency_ms == 2.0
    with pytest.raises(UserError, match="budget.max_latency_ms=1000 is below the baseline's own 3,000"):
        planned(tmp_path / "elsewhere", budget)  # a sweep of its own measures for itself
    assert not (tmp_path / "elsewhere").exists()  # and leaves nothing behind


def test_a_device_bound_added_on_resume_is_judged_with_this_runs_measurement(tmp_path, monkeypatch):
    import dataclasses

    import effscale.search as search_module

    real = search_module.measure_tables
    slow = lambda tables, build, **options: [dataclasses.replace(m, latency_ms=5000.0)  # noqa: E731
                                             for m in real(tables, build, **{**options, "latency": False})]
    first = planned(tmp_path, "budget.max_peak_mem_mb=100000")  # latency not measured: None recorded
    assert {c.cost.latency_ms for c in first.candidates} == {None}
    monkeypatch.setattr(search_module, "measure_tables", slow)
    with pytest.raises(UserError, match="budget: none of the 9 grid points fits .*5,000 ms latency"):
        planned(tmp_path, "budget.max_peak_mem_mb=100000", "budget.max_latency_ms=1000")
    assert (tmp_path / "tiny" / "study.db").exists()  # the sweep's study is not this run's to remove
    # nor is what the refused run measured recorded in it, for later runs to judge their budget by
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny' / 'study.db'}")
    assert {c["latency_ms"] for c in study.user_attrs["device_costs"]["costs"].values()} == {None}


def test_the_workers_of_a_launch_retry_only_failures_from_before_it_however_late_they_start(tmp_path):
    earlier = planned(tmp_path, "search.retry_failed=true")
    trial = earlier.study.ask()
    earlier.study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a failure of an earlier launch
    launch = planned(tmp_path, "search.retry_failed=true")
    assert launch.retry_below == trial._trial_id + 1
    for _ in range(3):  # trials of this launch, some of them failed
        launch.study.tell(launch.study.ask(), state=optuna.trial.TrialState.FAIL)
    worker = planned(tmp_path, "search.retry_failed=true", new_launch=False)
    assert worker.retry_below == launch.retry_below  # not past this launch's own failures
    assert planned(tmp_path, new_launch=False).retry_below is None  # without retry_failed, failures stand


def test_a_search_whose_workers_failed_exits_1_and_says_so(tmp_path, monkeypatch, capsys):
    from effscale import workers

    monkeypatch.setattr(workers, "run_local", lambda run, overrides, n: (results.read_trials(run.table), 2))
    with pytest.raises(SystemExit) as exited:
        search(overrides(f"out={tmp_path}", "name=tiny", "search.workers=2"))
    assert exited.value.code == 1
    assert capsys.readouterr().err == ("effscale search: 2 of 2 workers failed (their errors are above); the trials "
                                       "they finished are kept, and the same command trains what is left\n")


def test_a_worker_that_ended_early_while_the_others_settled_every_trial_is_no_failure(tmp_path, monkeypatch,
                                                                                     capsys):
    from effscale import workers

    # One worker killed (SIGKILL, OOM): the other took its trial over and trained the whole grid.
    monkeypatch.setattr(workers, "run_local", lambda run, overrides, n: (run.run(), 1))
    assert search(overrides(f"out={tmp_path}", "name=tiny", "search.workers=2")) is None
    assert capsys.readouterr().err.endswith(
        "effscale search: 1 of 2 workers ended early; the others settled every trial\n")


def test_the_papers_own_point_is_outside_the_default_macs_budget_and_inside_with_macs_unbounded(tmp_path):
    """Section 3.3's α = 1.2, β = 1.1 meets α·β²·γ² ≈ 2, but ceil(repeats·1.2) adds a block to every
    stage of B0: at 224 px it measures 2.59× B0's MACs, outside the default 2 ± 10 %."""
    from effscale.config import load, model_table
    from effscale.search import Search

    def plan(*extra):
        cfg = load("search", overrides(f"out={tmp_path}", "scale.width=1.0", "data.resolution=224", *extra))
        run = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)
        run.plan()
        return run

    measured = plan("budget.macs_tolerance=0.1")  # the default, which the tiny settings widen
    paper = next(c for c in measured.candidates if (c.alpha, c.beta) == (1.2, 1.1))
    assert round(paper.macs_ratio, 2) == 2.59 and paper.reasons == ["MACs ratio 2.59 is outside 2 ± 10%"]
    with pytest.raises(UserError, match=r"MACs ratio 2.04 is outside 2 ± 0.1%\)$"):  # as typed, not as 0 %
        plan("budget.macs_tolerance=0.001")
    unbounded = plan("budget.macs_tolerance=null")
    assert len(unbounded.feasible) == len(unbounded.candidates) == 9
    assert "MACs unbounded" in unbounded.describe_plan()
    assert not any(tmp_path.iterdir())  # planning writes nothing


def test_what_a_search_prints_ranks_its_grid_points_not_the_rows_compare_added_to_its_folder(tmp_path):
    from effscale.search import outcome

    def row(point, phi, alpha, beta, gamma, val_acc):
        return dict(trial=len(point), strategy="compound", phi=phi, alpha=alpha, beta=beta, gamma=gamma, point=point,
                    seed=0, state="COMPLETE", val_acc=val_acc, resolution=40, macs_ratio=2.0 ** phi, params=1e6,
                    train_seconds=1.0, test_acc=val_acc)

    table = pd.DataFrame([row("a1.2_b1_g1.291", 1, 1.2, 1.0, 1.291, 0.70), row("a1_b1.2_g1.1785", 1, 1.0, 1.2, 1.1785, 0.60),
                          row("compare_phi2_a1.2_b1_g1.291", 2, 1.2, 1.0, 1.291, 0.90)])
    text = outcome(table, tmp_path, "csv")
    assert "trials: 2 COMPLETE" in text and "best: alpha=1.2 beta=1 gamma=1.291 (40 px, MACs ×2.00)" in text
    again = pd.concat([table, pd.DataFrame([row("a1.2_b1_g1.291", 1, 1.2, 1.0, 1.291, 0.74) | {"seed": 1}])])
    # A standard deviation, labelled so: the report's and compare's ± are 95 % intervals.
    assert "val acc 0.720 ± 0.028 (std) over 2 seed(s)" in outcome(again, tmp_path, "csv")


def test_a_process_that_opens_a_second_sweep_logs_to_that_sweeps_search_log_alone(tmp_path):
    from effscale.search import log

    planned(tmp_path)
    planned(tmp_path, "name=second")
    log.info("a line of the second sweep")
    assert not (tmp_path / "tiny" / "search.log").exists()  # created with its first line
    assert (tmp_path / "second" / "search.log").read_text().count("a line of the second sweep") == 1


def test_a_new_study_refused_by_the_sweeps_recorded_settings_is_not_left_behind(tmp_path):
    tiny_search(tmp_path)  # the sweep's settings.json, one epoch, and trials trained with it
    journal = tmp_path / "elsewhere.log"
    with pytest.raises(UserError, match="trainer"):
        planned(tmp_path, "trainer.max_epochs=2", f"search.storage=journal:///{journal}")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert optuna.get_all_study_names(storage) == []


def test_points_whose_training_step_ran_out_of_device_memory_are_outside_a_memory_budget(tmp_path, monkeypatch):
    import dataclasses
    import math

    import effscale.search as search_module

    real = search_module.measure_tables
    monkeypatch.setattr(search_module, "measure_tables", lambda tables, build, **options: [
        dataclasses.replace(m, peak_mem_mb=math.inf) for m in real(tables, build, **options)])
    with pytest.raises(UserError, match=r"none of the 9 grid points fits .*out of device memory, "
                                        r"budget.max_peak_mem_mb=100,000\)"):
        planned(tmp_path, "budget.max_peak_mem_mb=100000")


def test_only_a_waiting_trial_whose_process_died_is_failed_as_stale():
    import time

    from effscale.liveness import fail_stale_trials, this_process

    study = optuna.create_study()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (alive.pid, int(dead.stdout)):  # enqueued, and not yet asked for
            study.enqueue_trial({}, user_attrs={**this_process(), "pid": pid, "heartbeat": time.time()})
        assert fail_stale_trials(study, stale_after_s=3600) == 1
    finally:
        alive.kill()
        alive.wait()
    waiting, failed = study.get_trials()
    assert waiting.state == optuna.trial.TrialState.WAITING and waiting.user_attrs["pid"] == alive.pid
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs["stale"]


def test_the_noise_verdict_of_a_search_with_one_trained_point_says_there_is_no_runner_up():
    from effscale.search import noise_verdict

    one = pd.DataFrame([{"alpha": 1.0, "beta": 1.0, "gamma": 1.4142, "val_acc": 0.52, "val_std": 0.007, "seeds": 2}])
    assert noise_verdict(one) == "noise: one point trained, so there is no runner-up to tell it from"


def test_a_point_that_leads_on_one_seed_after_the_leaders_extra_seeds_is_trained_again_before_it_is_best(
        tmp_path, monkeypatch, capsys):
    import reliability_scenarios as rs

    from effscale import train

    # α = 1.85 and 1.9 lead on seed 0, get a second seed and fall below α = 1.95's single seed: it is
    # seeded too, and the best is then decided over two seeds each.
    accuracy = {(1.85, 0): 0.50, (1.9, 0): 0.49, (1.95, 0): 0.48, (2.0, 0): 0.30,
                (1.85, 1): 0.40, (1.9, 1): 0.40, (1.95, 1): 0.47}
    calls = []

    def fit(table, data, recipe, seed, **kwargs):
        calls.append((table["depth_mult"], seed))
        acc = accuracy[(table["depth_mult"], seed)]
        return {"state": "COMPLETE", "val_acc": acc, "test_acc": acc, "epochs": 1, "train_seconds": 0.1,
                "val_history": [acc], "reason": None}

    monkeypatch.setattr(train, "fit_candidate", fit)
    settings = [o for o in rs.TINY_SEARCH if not o.startswith("search.extra_seeds")]
    search([*settings, f"out={tmp_path}", "name=race", "search.top_k=2", "search.extra_seeds=1"])
    assert sorted(calls) == sorted(accuracy)  # (2.0, 1) never: it is never among the best two
    assert "best: alpha=1.95 beta=1 gamma=1 " in capsys.readouterr().out


def test_a_search_resumed_after_its_first_round_of_extra_seeds_trains_the_point_that_moved_up(
        tmp_path, monkeypatch, capsys):
    import reliability_scenarios as rs

    from effscale import train

    # As above, but the run is stopped when α = 1.95 (now ahead on its one seed) starts its second
    # seed: every trial the counts foresee is settled, and the rerun must still train that one.
    accuracy = {(1.85, 0): 0.50, (1.9, 0): 0.49, (1.95, 0): 0.48, (2.0, 0): 0.30,
                (1.85, 1): 0.40, (1.9, 1): 0.40, (1.95, 1): 0.47}
    calls, stop = [], [(1.95, 1)]

    def fit(table, data, recipe, seed, **kwargs):
        key = (table["depth_mult"], seed)
        if key in stop:
            stop.clear()
            raise KeyboardInterrupt
        calls.append(key)
        return {"state": "COMPLETE", "val_acc": accuracy[key], "test_acc": accuracy[key], "epochs": 1,
                "train_seconds": 0.1, "val_history": [accuracy[key]], "reason": None}

    monkeypatch.setattr(train, "fit_candidate", fit)
    settings = [o for o in rs.TINY_SEARCH if not o.startswith("search.extra_seeds")]
    argv = [*settings, f"out={tmp_path}", "name=race", "search.top_k=2", "search.extra_seeds=1"]
    with pytest.raises(KeyboardInterrupt):
        search(argv)
    assert (1.95, 1) not in calls
    capsys.readouterr()
    search(argv)
    out = capsys.readouterr().out
    assert "6 trials already complete, 0 to run, and 1 extra seed(s) for points that moved up among the best" in out
    assert sorted(calls) == sorted(accuracy)
    assert "best: alpha=1.95 beta=1 gamma=1 " in out
    # Once trained, the seed of the point that moved up is counted with the others.
    search(argv)
    assert "7 trials already complete, 0 to run\n" in capsys.readouterr().out
    assert sorted(calls) == sorted(accuracy)


def test_two_searches_on_one_study_never_train_the_same_point_twice(tmp_path, monkeypatch):
    """A second `effscale search` of the same sweep (or a search beside `search.workers`) may read the
    study just before the other starts a point: it claims the point, as workers do, before training."""
    import reliability_scenarios as rs

    from effscale import train
    from effscale.config import load, model_table
    from effscale.search import Job, Search

    trained = []

    def fit(table, data, recipe, seed, **kwargs):
        trained.append(table["depth_mult"])
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "train_seconds": 0.1,
                "val_history": [0.5], "reason": None}

    monkeypatch.setattr(train, "fit_candidate", fit)
    cfg = load("search", [*rs.TINY_SEARCH, f"out={tmp_path}", "name=shared"])
    first, second = (Search(cfg, model_table(cfg), "cpu", say=lambda line: None) for _ in range(2))
    for run in (first, second):
        run.plan()
        run.open()
    job = Job(first.feasible[0], 0)
    held = first.start_trial(job)  # the first search has just started the point ...
    monkeypatch.setattr(second, "_running", lambda: set())  # ... after the second read what runs
    second.run_jobs([job])
    assert trained == []
    assert [t.number for t in second.study.get_trials() if t.user_attrs.get("repeat_of") == held.number]


def test_a_search_started_beside_another_on_a_new_folder_neither_removes_it_nor_fails_on_its_tables(
        tmp_path, monkeypatch):
    import sqlite3

    import reliability_scenarios as rs
    from sqlalchemy.exc import OperationalError

    from effscale import search as search_module
    from effscale.config import load, model_table
    from effscale.search import Search

    cfg = load("search", [*rs.TINY_SEARCH, f"out={tmp_path}", "name=shared"])
    sweep = tmp_path / "shared"
    real_create = optuna.create_study
    racing = [OperationalError("CREATE TABLE studies", {}, sqlite3.OperationalError("table studies already exists"))]

    def create_study(**kwargs):  # the other search's schema appears while this one creates it
        if racing:
            raise racing.pop()
        return real_create(**kwargs)

    monkeypatch.setattr(optuna, "create_study", create_study)
    run = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)
    run.plan()
    run.open()
    assert not racing and (sweep / "study.db").exists()

    # The folder was new when this search looked, and another made it (and its study) just after:
    # a study this search then cannot open leaves the other's folder alone.
    monkeypatch.setattr(search_module, "first_new_folder", lambda path: sweep)
    monkeypatch.setattr(optuna, "create_study", lambda **kw: (_ for _ in ()).throw(ValueError("refused")))
    late = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)
    late.plan()
    with pytest.raises(UserError, match="cannot open the study"):
        late.open()
    assert (sweep / "study.db").exists()
    # The same with the other search's journal file in that folder.
    journal = sweep / "study.journal"
    journal.write_text("the other search's\n")
    cfg = load("search", [*rs.TINY_SEARCH, f"out={tmp_path}", "name=shared", f"search.storage=journal://{journal}"])
    late = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)
    late.plan()
    with pytest.raises(UserError, match="cannot open the study"):
        late.open()
    assert journal.read_text() == "the other search's\n"


def test_a_waiting_trial_someone_else_enqueued_is_left_alone(tmp_path, monkeypatch):
    """`ask` hands out the study's oldest waiting trial, which may be another process's (an older search,
    or optuna's API by hand): a search starts its own trials, each recorded as what it trained."""
    import reliability_scenarios as rs

    from effscale import train
    from effscale.config import load, model_table
    from effscale.liveness import this_process
    from effscale.search import Job, Search

    def fit(table, data, recipe, seed, **kwargs):  # each network's accuracy tells which one trained
        acc = table["depth_mult"] / 10
        return {"state": "COMPLETE", "val_acc": acc, "test_acc": acc, "epochs": 1, "train_seconds": 0.1,
                "val_history": [acc], "reason": None}

    monkeypatch.setattr(train, "fit_candidate", fit)
    argv = [*rs.TINY_SEARCH, f"out={tmp_path}", "name=shared"]
    cfg = load("search", argv)
    other = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)  # the study, and a trial another
    other.plan()                                                          # process enqueued, not yet asked
    other.open()
    last = other.feasible[-1]
    alive = {**this_process(), "pid": os.getppid()}  # a live process here: its waiting trial is not stale
    other.study.enqueue_trial({"point": last.point}, user_attrs=other.trial_attrs(Job(last, 0)) | alive)
    search(argv)
    table = results.read_trials(tmp_path / "shared")
    assert (table["val_acc"] == table["depth_mult"] / 10).all() and len(table) == rs.TINY_POINTS
    waiting = [t for t in other.study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert [t.user_attrs["pid"] for t in waiting] == [os.getppid()]  # still the other process's to ask for


def test_searches_opening_one_new_sqlite_study_create_it_one_at_a_time(tmp_path):
    """Searches started together on a new sweep folder each created the study's tables, and Optuna's
    schema stamp refused all but one ("UNIQUE constraint failed: alembic_version.version_num")."""
    import threading
    import time

    from effscale.search import _one_at_a_time

    events = []

    def create(name: str) -> None:
        with _one_at_a_time(tmp_path / "study.db"):
            events.append(f"{name} in")
            time.sleep(0.3)
            events.append(f"{name} out")

    threads = [threading.Thread(target=create, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
    assert (tmp_path / "study.db").stat().st_size == 0  # an empty SQLite database, for Optuna to fill


def test_a_results_table_without_the_columns_rows_are_selected_by_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "trials.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"trials.csv: not an effscale results table \(no strategy column\)"):
        results.read_trials(tmp_path)


def test_a_point_another_process_still_trains_is_said_to_be_left_out_of_the_ranking(tmp_path, monkeypatch, capsys):
    import time

    from effscale import train

    monkeypatch.setattr(train, "fit_candidate", lambda *a, **kw: {
        "state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "train_seconds": 0.1,
        "val_history": [0.5], "reason": None})
    run = planned(tmp_path)
    point = run.feasible[0].point
    # another host's search training the first point, its heartbeat fresh
    run.study.enqueue_trial({}, user_attrs={"point": point, "seed": 0, "host": "node7", "pid": 4242,
                                            "pid_ns": "pid:[1]", "heartbeat": time.time()})
    run.study.ask()
    capsys.readouterr()
    table = tiny_search(tmp_path)
    assert point not in set(table.loc[table["state"] == "COMPLETE", "point"])
    assert capsys.readouterr().err == (
        "effscale search: 1 trial(s) still running in another process (node7 pid 4242), left out of the ranking "
        "above; the same command takes their results in once they finish, or trains their points again once "
        "their process is gone (search.stale_after_s=600 s without a heartbeat)\n")


def test_a_search_refused_for_its_folders_unreadable_table_creates_no_study_there(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "trials.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not an effscale results table"):
        tiny_search(tmp_path)
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["trials.csv"]


def test_a_storage_that_is_another_programs_sqlite_database_is_refused_and_left_as_it_was(tmp_path):
    import hashlib
    import sqlite3

    other = tmp_path / "inventory.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE parts (name TEXT)")
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"inventory.db: a SQLite database of something else \(tables parts\)"):
        tiny_search(tmp_path, f"search.storage=sqlite:///{other}")
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before and not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("where", ["_create_study", "_check_against_record", "_set_aside_earlier_study", "fail_stale"])
def test_a_ctrl_c_while_a_new_sweep_folder_is_set_up_leaves_no_folder_and_an_old_one_as_it_was(tmp_path, monkeypatch,
                                                                                              where):
    import reliability_scenarios as rs

    from effscale import search as search_module
    from effscale.config import load, model_table
    from effscale.search import Search

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "fail_stale":
        monkeypatch.setattr(search_module, "fail_stale_trials", interrupt)
    else:
        monkeypatch.setattr(Search, where, interrupt)
    cfg = load("search", [*rs.TINY_SEARCH, f"out={tmp_path / 'results'}", "name=cut"])
    run = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)
    run.plan()
    with pytest.raises(KeyboardInterrupt):
        run.open()
    assert not (tmp_path / "results").exists()

    monkeypatch.undo()
    run = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)
    run.plan()
    run.open()
    before = sorted(p.name for p in run.sweep_dir.iterdir())
    monkeypatch.setattr(search_module, "fail_stale_trials", interrupt)
    again = Search(cfg, model_table(cfg), "cpu", say=lambda line: None)
    again.plan()
    with pytest.raises(KeyboardInterrupt):
        again.open()
    assert sorted(p.name for p in run.sweep_dir.iterdir()) == before
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{run.sweep_dir / 'study.db'}")] == ["cut"]
