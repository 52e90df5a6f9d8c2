"""Issue #8: nothing lost, nothing half-written, every user error one clear line.

The scenarios live in tests/reliability_scenarios.py, which benchmarks/reliability.py runs too. Bad
inputs go through the `effscale` command as a user types it; faults inside a trial are injected in
process (an out-of-memory, a diverging loss) or by signalling a running search (Ctrl-C, kill -9).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import reliability_scenarios as rs
from reliability_scenarios import BAD_INPUTS, TINY_SEARCH

PACKAGE = Path(__file__).resolve().parent.parent / "effscale"


# --- 1. bad input: one line, exit 2, nothing written ----------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return rs.make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def outcomes(inputs) -> dict[str, rs.Outcome]:
    """Every bad-input scenario, run once, a few side by side (each is mostly interpreter start-up)."""
    return {o.scenario.name: o for o in rs.run_bad_inputs(inputs)}


@pytest.mark.parametrize("name", [s.name for s in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(outcomes, name):
    outcome = outcomes[name]
    assert outcome.problems() == [], f"{' '.join(outcome.scenario.args)}\n{outcome.stderr}"


def test_pickled_code_in_a_checkpoint_is_refused_without_running_it(outcomes, inputs):
    assert outcomes["checkpoint with pickled code"].returncode == 2
    assert "weights_only" in outcomes["checkpoint with pickled code"].stderr
    assert not (inputs["pickled_code"].parent / "code_ran").exists()


def test_corrupt_image_in_a_folder_is_skipped_with_a_counted_warning_not_met_mid_epoch(tmp_path):
    from effscale.data import build_datamodule

    root = rs.image_folder(tmp_path / "images", per_class=6, corrupt=1)
    cfg = {"name": "imagefolder", "root": str(root), "val_fraction": 0.25, "num_classes": None, "in_channels": 3,
           "native_resolution": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "batch_size": 4, "num_workers": 0}
    data = build_datamodule(cfg, resolution=16, batch_size=4, num_workers=0)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\), the first .*red/0\.png"):
        data.setup("fit")
    seen = sum(len(y) for loader in (data.train_dataloader(), data.val_dataloader()) for _, y in loader)
    assert seen == 11  # every readable image decodes in a full pass; the cut-off one is never met


def test_a_storage_server_that_never_answers_fails_within_the_connect_timeout(tmp_path, monkeypatch):
    import socket
    import time

    from sqlalchemy.exc import OperationalError

    from effscale import storages

    monkeypatch.setattr(storages, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as server:  # accepts the TCP connection (kernel backlog), never says a word
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"postgresql+psycopg://u:p@127.0.0.1:{server.getsockname()[1]}/db"
        started = time.monotonic()
        with pytest.raises(OperationalError, match="timeout"):
            storages.open_storage(url, tmp_path)
    assert time.monotonic() - started < 20


# --- 2. nothing half-written ----------------------------------------------------------------------------


def _no_temporaries(folder: Path) -> list[str]:
    """Leftover temporary files (a writer's lock file is meant to stay)."""
    return sorted(p.name for p in folder.iterdir()
                  if (p.name.startswith(".") or p.suffix == ".tmp") and p.suffix != ".lock")


def test_trials_csv_survives_a_write_that_fails_halfway(tmp_path, monkeypatch):
    from effscale import results

    old = pd.DataFrame([{"trial": 0, "point": "a2_b1_g1", "seed": 0, "strategy": "compound", "state": "COMPLETE",
                         "val_acc": 0.5}])
    path = results.write_trials(old, tmp_path / "trials.csv")
    before = path.read_bytes()

    def half_then_fail(self, f, *args, **kwargs):
        f.write("trial,strategy,ph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(OSError):
        results.upsert_trials(path, [{"trial": 1, "point": "a1.9_b1_g1", "seed": 0, "strategy": "compound"}])
    assert path.read_bytes() == before
    assert _no_temporaries(tmp_path) == []


def test_trials_csv_survives_a_rename_that_fails(tmp_path, monkeypatch):
    from effscale import results

    table = pd.DataFrame([{"trial": 0, "point": "p", "seed": 0, "strategy": "compound", "state": "COMPLETE"}])
    path = results.write_trials(table, tmp_path / "trials.csv")
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(OSError):
        results.write_trials(table.assign(state="FAIL"), path)
    assert path.read_bytes() == before and _no_temporaries(tmp_path) == []


def test_report_file_survives_a_write_that_fails_halfway(tmp_path):
    from effscale.files import write_atomically

    path = tmp_path / "report.md"
    write_atomically(path, lambda f: f.write("# complete report\n"))

    def half_then_fail(f) -> None:
        f.write("# half a rep")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "# complete report\n" and _no_temporaries(tmp_path) == []


def test_checkpoint_survives_a_save_that_fails_halfway(tmp_path, monkeypatch):
    from effscale import weights
    from effscale.weights import Preprocessing, save_checkpoint

    model = torch.nn.Linear(2, 2)
    prep = Preprocessing(resize=8, crop=8, mean=(0.5,), std=(0.5,))
    path = save_checkpoint(tmp_path / "model.pt", model, {"name": "tiny"}, ["a", "b"], prep)
    before = path.read_bytes()

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("disk quota exceeded")

    monkeypatch.setattr(weights.torch, "save", half_then_fail)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, model, {"name": "tiny"}, ["a", "b"], prep)
    assert path.read_bytes() == before and _no_temporaries(tmp_path) == []


def test_atomic_writes_give_files_the_umask_mode_not_mkstemps_0600(tmp_path):
    import stat

    from effscale import results
    from effscale.files import write_atomically
    from effscale.weights import Preprocessing, save_checkpoint

    umask = os.umask(0o027)
    try:
        written = [results.write_trials(pd.DataFrame([{"trial": 0}]), tmp_path / "trials.csv"),
                   save_checkpoint(tmp_path / "model.pt", torch.nn.Linear(2, 2), {"name": "tiny"}, ["a", "b"],
                                   Preprocessing(resize=8, crop=8, mean=(0.5,), std=(0.5,)))]
        write_atomically(tmp_path / "report.md", lambda f: f.write("# report\n"))
        written.append(tmp_path / "report.md")
    finally:
        os.umask(umask)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == \
        {p.name: oct(0o640) for p in written}


# --- 3. faults inside a trial ---------------------------------------------------------------------------


def test_out_of_memory_in_one_candidate_fails_that_trial_and_the_sweep_goes_on(tmp_path):
    table = rs.out_of_memory_in_one_trial(tmp_path)
    assert list(table["state"]) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "OutOfMemoryError: CUDA out of memory" in table.loc[1, "reason"]


def test_a_search_where_every_trial_failed_exits_1_and_its_rerun_says_how_to_retry(tmp_path, capsys):
    def broken(table, data, recipe, **kwargs):
        raise RuntimeError("no such kernel")

    with pytest.raises(SystemExit) as exited:
        rs.search_in_process(tmp_path, fit=broken)
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("effscale search: no trial completed (why each failed: the reason column")
    with pytest.raises(SystemExit):
        rs.search_in_process(tmp_path, fit=broken)
    assert (f"{rs.TINY_POINTS} trials already ran ({rs.TINY_POINTS} failed; search.retry_failed=true trains those "
            "points again), 0 to run") in capsys.readouterr().out
    table = rs.search_in_process(tmp_path, "search.retry_failed=true")  # the real training this time
    assert list(table["state"]) == ["COMPLETE"] * rs.TINY_POINTS


def test_diverging_loss_fails_that_trial_with_the_reason_and_the_sweep_goes_on(tmp_path):
    table = rs.diverging_loss_in_one_trial(tmp_path)
    assert list(table["state"]) == ["COMPLETE", "FAIL"]
    assert re.search(r"loss is (?:nan|inf|not finite)", table.loc[1, "reason"])
    assert table.loc[0, "val_acc"] >= 0 and pd.isna(table.loc[1, "val_acc"])


def test_ctrl_c_then_kill_9_then_rerun_loses_no_trial_and_trains_none_twice(tmp_path):
    run = rs.interrupt_kill_resume(tmp_path)
    # Ctrl-C once the first trial is complete: exit 130, one line, the finished rows kept.
    assert run.interrupted_rc == 130, run.interrupted_stderr
    assert run.interrupted_stderr.strip().splitlines()[-1] == "effscale search: interrupted"
    assert "Traceback" not in run.interrupted_stderr
    first = run.after_interrupt[run.after_interrupt["state"] == "COMPLETE"]
    second = run.after_kill[run.after_kill["state"] == "COMPLETE"]
    assert len(first) >= 1 and run.killed_rc == -signal.SIGKILL and len(second) > len(first)
    # The third launch trains only what is left, and every earlier complete trial is the same trial.
    assert run.rerun.returncode == 0, run.rerun.stderr
    assert f"{len(second)} trials already complete, {rs.TINY_POINTS - len(second)} to run" in run.rerun.stdout
    assert (run.final["state"] == "COMPLETE").sum() == rs.TINY_POINTS
    assert run.lost() == 0 and run.trained_twice() == 0
    # The interrupted and the killed trial, if a signal landed inside one: a Ctrl-C while a finished trial
    # is being recorded waits for it, and either signal can fall between two trials.
    unfinished = [t for t in run.study if t.state.name == "FAIL"]
    assert all(t.user_attrs.get("stale") for t in unfinished)
    assert len(run.study) == rs.TINY_POINTS + len(unfinished)


def test_ctrl_c_inside_a_trial_marks_it_interrupted_and_the_rerun_trains_it(tmp_path):
    from effscale import train

    real_fit, calls = train.fit_candidate, []

    def ctrl_c(epoch, val_acc):
        raise KeyboardInterrupt  # inside trainer.fit, where Lightning turns it into sys.exit(1)

    def fit(table, data, recipe, **kwargs):
        calls.append(table["depth_mult"])
        if len(calls) == 2:
            return real_fit(table, data, recipe, **{**kwargs, "report": ctrl_c})
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "train_seconds": 0.1,
                "val_history": [0.5], "reason": None}

    with pytest.raises(KeyboardInterrupt):
        rs.search_in_process(tmp_path, fit=fit)
    [interrupted] = [t for t in rs.study_trials(tmp_path / "sweep") if t.state.name == "FAIL"]
    assert interrupted.user_attrs["stale"] and interrupted.user_attrs["reason"] == "interrupted"
    assert list(rs.trials(tmp_path / "sweep")["state"]) == ["COMPLETE"]
    table = rs.search_in_process(tmp_path, fit=fit)
    assert list(table["state"]) == ["COMPLETE"] * rs.TINY_POINTS
    assert calls == pytest.approx([1.85, 1.9, 1.9, 1.95, 2.0])  # the interrupted point again, none twice


# Ctrl-C; SIGTERM as `effscale search` raises it; submitit's time-limit and preemption signal in a SLURM job.
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2], ids=lambda s: s.name)
def test_a_stop_during_a_storage_write_is_raised_once_the_write_is_done(signum):
    from effscale.stops import interrupts_deferred

    def stop(signum, frame):
        raise KeyboardInterrupt

    done = []
    heard = signal.signal(signum, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # an undeferred stop would have been raised here
                done.append("written")
    finally:
        signal.signal(signum, heard)
    assert done == ["written"]


def test_ctrl_c_while_a_finished_trial_is_recorded_keeps_it_whole(tmp_path, monkeypatch):
    from effscale import results

    real_upsert = results.upsert_trials

    def upsert_after_ctrl_c(table, rows):
        if any(row["state"] == "COMPLETE" for row in rows):
            os.kill(os.getpid(), signal.SIGINT)  # between the study's record and the results row
        return real_upsert(table, rows)

    def fit(table, data, recipe, **kwargs):
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "train_seconds": 0.1,
                "val_history": [0.5], "reason": None}

    monkeypatch.setattr(results, "upsert_trials", upsert_after_ctrl_c)
    heard = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            rs.search_in_process(tmp_path, fit=fit)
    finally:
        signal.signal(signal.SIGINT, heard)
    assert [t.state.name for t in rs.study_trials(tmp_path / "sweep")] == ["COMPLETE"]
    assert list(rs.trials(tmp_path / "sweep")["state"]) == ["COMPLETE"]


@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_ctrl_c_heard_while_a_trial_is_created_leaves_it_stale_not_running(tmp_path, monkeypatch, sampler):
    import optuna

    from effscale.search import Search

    def ctrl_c_inside(create):
        def created(*args, **kwargs):
            trial = create(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)  # held off until the trial is whole, then raised
            return trial
        return created

    monkeypatch.setattr(Search, "start_trial", ctrl_c_inside(Search.start_trial))
    monkeypatch.setattr(optuna.Study, "ask", ctrl_c_inside(optuna.Study.ask))
    heard = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            rs.search_in_process(tmp_path, f"search={sampler}", fit=lambda *a, **k: pytest.fail("trained"))
    finally:
        signal.signal(signal.SIGINT, heard)
    [trial] = rs.study_trials(tmp_path / "sweep")
    assert (trial.state.name, trial.user_attrs.get("stale"), trial.user_attrs.get("reason")) == (
        "FAIL", True, "interrupted")


def test_a_sigterm_outside_lightnings_fit_winds_the_search_down_as_a_ctrl_c_does(tmp_path):
    # `kill`, or scancel on a search run inside an sbatch job, while no trainer.fit (whose Lightning
    # handles SIGTERM itself) is running: the trial it stops runs again next launch.
    def fit(table, data, recipe, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "train_seconds": 0.1,
                "val_history": [0.5], "reason": None}

    def terminated(signum, frame):  # SIGTERM's default, which would end pytest, as an exception
        raise RuntimeError("terminated")

    saved = signal.signal(signal.SIGTERM, terminated)
    try:
        with pytest.raises(KeyboardInterrupt):  # the CLI's "effscale search: interrupted", exit 130
            rs.search_in_process(tmp_path, fit=fit)
    finally:
        signal.signal(signal.SIGTERM, saved)
    [trial] = rs.study_trials(tmp_path / "sweep")
    assert (trial.state.name, trial.user_attrs["stale"], trial.user_attrs["reason"]) == ("FAIL", True, "interrupted")


@pytest.mark.parametrize("stop", ["time limit", "preemption"])
def test_the_cluster_ending_a_job_mid_trial_leaves_the_trial_to_run_again_not_failed(tmp_path, stop):
    # What submitit raises in a SLURM job at its last time limit (no requeue left), or on a preemption
    # once it has requeued the job.
    from submitit.core.utils import UncompletedJobError

    ended = {"time limit": UncompletedJobError("Job not requeued because: timed-out too many times."),
             "preemption": SystemExit(-1)}[stop]

    def fit(table, data, recipe, **kwargs):
        raise ended

    with pytest.raises(type(ended)):  # as it came: submitit's own handling of the job's end follows
        rs.search_in_process(tmp_path, fit=fit)
    [trial] = rs.study_trials(tmp_path / "sweep")
    assert trial.state.name == "FAIL" and trial.user_attrs["stale"]
    assert trial.user_attrs["reason"].startswith("interrupted")


def test_ctrl_c_still_ends_the_sweep_when_the_storage_cannot_mark_the_trial(tmp_path, monkeypatch):
    from optuna.exceptions import StorageInternalError
    from optuna.trial import Trial

    real = Trial.set_user_attr

    def locked(self, key, value):
        if key == "stale":
            raise StorageInternalError("An exception is raised during the commit.")
        return real(self, key, value)

    def fit(table, data, recipe, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trial, "set_user_attr", locked)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C's exit 130, not a storage error
        rs.search_in_process(tmp_path, fit=fit)
    # Left RUNNING under this process's id: a later launch on this host marks it stale (liveness.is_stale).
    [left] = rs.study_trials(tmp_path / "sweep")
    assert left.state.name == "RUNNING" and left.user_attrs["pid"] == os.getpid()


# --- 4. security ----------------------------------------------------------------------------------------


def test_every_torch_load_in_the_package_is_weights_only():
    unsafe = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start(): text.find(")", match.end()) + 1]
            if "weights_only=True" not in call:
                unsafe.append(f"{path.name}:{text.count(chr(10), 0, match.start()) + 1}")
    assert unsafe == []


def test_dashboard_listens_on_localhost_unless_told_otherwise(tmp_path, monkeypatch):
    import optuna

    from effscale import cli, dashboard

    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    bound = []
    monkeypatch.setattr(dashboard._ThreadingServer, "serve_forever",
                        lambda server: bound.append(server.server_address[0]))
    assert cli.main(["dashboard", str(tmp_path), "--port", "0"]) == 0
    assert cli.main(["dashboard", str(tmp_path), "--port", "0", "--host", "0.0.0.0"]) == 0
    assert bound == ["127.0.0.1", "0.0.0.0"]  # the sockets' own addresses


def test_wandb_api_key_never_reaches_the_sweep_folder(tmp_path):
    canary = "secret-canary-123"
    done = rs.cli("search", *TINY_SEARCH, "search.grid.alpha=[1.95,2.0]", "logger=wandb", f"out={tmp_path}",
                  "name=sweep", env={"WANDB_API_KEY": canary})
    assert done.returncode == 0, done.stderr
    sweep = tmp_path / "sweep"
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 2  # W&B did write its runs there
    assert rs.secrets_in(sweep, canary) == []
    assert canary not in done.stdout + done.stderr


def test_a_multirun_search_where_every_trial_failed_exits_1_too(tmp_path, monkeypatch, capsys):
    from effscale import train
    from effscale.multirun import multirun

    def broken(table, data, recipe, **kwargs):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(train, "fit_candidate", broken)
    with pytest.raises(SystemExit) as exited:  # the basic launcher: its one job runs in this process
        multirun(["-m", *rs.TINY_SEARCH, f"out={tmp_path}", "name=sweep", "search.workers=1"])
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("effscale search: no trial completed (why each failed: the reason column")
    assert set(pd.read_csv(tmp_path / "sweep" / "trials.csv")["state"]) == {"FAIL"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a parent's death signal is Linux's prctl")
def test_workers_are_interrupted_when_the_search_that_started_them_is_killed(tmp_path):
    """`kill -9` of `effscale search search.workers=2` must not leave its workers training unattended:
    each gets the SIGINT of a Ctrl-C, which marks its trial stale for the rerun."""
    import subprocess

    started, interrupted = tmp_path / "started", tmp_path / "interrupted"
    worker = (f"import pathlib, signal, sys, time; signal.signal(signal.SIGINT, lambda *_: "
              f"(pathlib.Path({str(interrupted)!r}).touch(), sys.exit(130))); "
              f"pathlib.Path({str(started)!r}).touch(); time.sleep(120)")
    search = f"import sys; from effscale.workers import run_workers; run_workers([[sys.executable, '-c', {worker!r}]])"
    launcher = subprocess.Popen([sys.executable, "-c", search])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists()
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 10
    while not interrupted.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert interrupted.exists()
