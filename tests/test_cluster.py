"""Several workers on one study: locally, through submitit_local, and on the SLURM cluster and
PostgreSQL server of tests/services/ (those tests skip when the services are absent, and fail under CI).

Every sweep here is the same tiny grid (three points, one epoch on a few hundred procedural images),
so that the tests prove who trained what, not how well.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from conftest import REPO, run_cli, running_after_a_complete, study_trials, wait_for
from effscale import results
from effscale.claims import claim, holders, owner
from effscale.liveness import this_process
from effscale.workers import Worker, fail_abandoned

TINY = ["logger=csv", "data.train_size=128", "data.val_size=64", "data.test_size=64", "data.batch_size=64",
        "trainer.max_epochs=1", "search.top_k=0", "search.grid.alpha=[1.0,1.1]", "search.grid.beta=[1.0,1.1]",
        "search.grid.step=0.1", "budget.macs_tolerance=1.0", "trainer.threads=1"]
POINTS = 3  # the feasible points of that grid

optuna.logging.set_verbosity(optuna.logging.WARNING)


def assert_each_point_once(sweep_dir: Path, trials: list[optuna.trial.FrozenTrial]) -> None:
    """trials.csv has one COMPLETE row per grid point, and the study one COMPLETE trial per point."""
    table = results.read_trials(sweep_dir)
    done = table[table["state"] == "COMPLETE"]
    assert len(done) == POINTS and done["point"].is_unique, table[["trial", "point", "state"]]
    complete = Counter(t.user_attrs["point"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == Counter(set(done["point"])), complete
    assert set(done["trial"]) == {t.number for t in trials if t.state == TrialState.COMPLETE}


def _just_started(trials: list[optuna.trial.FrozenTrial] | None, within_s: float = 4.0):
    """The RUNNING trials of SLURM jobs in their first epoch that started less than `within_s` ago,
    newest first: those that hold their point (a claim that lost to another for the same point is not
    training)."""
    now = datetime.datetime.now()
    held = holders(trials or [])
    fresh = [t for t in trials or [] if t.state == TrialState.RUNNING and t.user_attrs.get("slurm_job")
             and (now - t.datetime_start).total_seconds() < within_s and not t.intermediate_values
             and owner(held.get((t.user_attrs.get("point"), int(t.user_attrs.get("seed", -1))), [])) is t]
    return sorted(fresh, key=lambda t: t.datetime_start, reverse=True)


def background_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "effscale.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


# --- claims, without training ---------------------------------------------------------------------


def fake_search(study: optuna.Study, points: list[str]) -> SimpleNamespace:
    """What `claim` and `Worker` use of a Search: its study, storage setting, feasible points, a trial's
    first attributes, and Search's own ways of starting a trial with them."""
    from effscale.search import Search

    search = SimpleNamespace(study=study, opts={"storage": None}, _points=lambda: points,
                             trial_attrs=lambda job: {"point": job.candidate.point, "seed": job.seed,
                                                      **this_process(), "heartbeat": time.time()})
    search.start_trial = lambda job, **attrs: Search.start_trial(search, job, **attrs)
    search.begin = lambda create: Search.begin(search, create)
    return search


def test_second_claim_on_a_point_loses_to_the_lower_trial_and_is_recorded_as_a_repeat():
    study = optuna.create_study()
    job = SimpleNamespace(candidate=SimpleNamespace(point="p1"), seed=0, key=("p1", 0))
    first = claim(fake_search(study, ["p1", "p2"]), job)
    second = claim(fake_search(study, ["p1", "p2"]), job)
    assert first is not None and second is None
    loser = study.get_trials()[1]
    assert loser.state == TrialState.FAIL and loser.user_attrs["repeat_of"] == first.number
    assert owner(holders(study.get_trials())[job.key]).number == first.number


def test_claim_of_a_point_held_by_a_dead_process_waits_until_that_trial_is_marked_stale():
    study = optuna.create_study()
    job = SimpleNamespace(candidate=SimpleNamespace(point="p1"), seed=0, key=("p1", 0))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = claim(fake_search(study, ["p1"]), job)
    study._storage.set_trial_user_attr(held._trial_id, "pid", int(dead.stdout))
    assert claim(fake_search(study, ["p1"]), job) is None  # still RUNNING: it owns the point
    assert fail_abandoned(study, stale_after_s=3600) == 1
    assert claim(fake_search(study, ["p1"]), job) is not None


def test_with_retry_failed_only_a_failure_of_an_earlier_launch_gives_its_point_up():
    study = optuna.create_study()
    job = SimpleNamespace(candidate=SimpleNamespace(point="p1"), seed=0, key=("p1", 0))
    earlier = claim(fake_search(study, ["p1"]), job)
    study.tell(earlier, state=TrialState.FAIL)
    launch = earlier._trial_id + 1  # the first trial id of the next launch
    again = claim(fake_search(study, ["p1"]), job, retry_below=launch)
    assert again is not None
    study.tell(again, state=TrialState.FAIL)
    assert owner(holders(study.get_trials())[job.key], retry_below=launch).number == again.number


def test_a_worker_numbers_its_point_after_those_other_workers_are_training():
    study = optuna.create_study()
    jobs = [SimpleNamespace(candidate=SimpleNamespace(point=p, same_as=None), seed=0, key=(p, 0)) for p in ("p1", "p2")]
    other = claim(fake_search(study, ["p1", "p2"]), jobs[0])  # worker 0, a live process, is training p1
    study._storage.set_trial_user_attr(other._trial_id, "pid", os.getppid())
    labels = []

    def train(trial, job, label):
        labels.append(label)
        study.tell(trial, 0.5)
        study.tell(other, 0.5)  # and worker 0 finishes meanwhile

    search = fake_search(study, ["p1", "p2"])
    search.retry_below, search.stale_after_s, search.train = None, 3600, train
    Worker(search, 1).run_jobs(jobs, "grid points")
    assert labels == ["[grid points 2/2]"]


def test_a_training_trial_beats_from_a_thread_until_its_block_ends_or_it_is_finished_elsewhere(caplog):
    from effscale.liveness import heartbeat

    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("heartbeat", 0.0)

    def beat():
        return study.trials[0].user_attrs["heartbeat"]

    with heartbeat(study, trial._trial_id, every_s=0.05):  # a long epoch: no report, but the heartbeat moves on
        first = wait_for(lambda: beat() or None, 10, "a first heartbeat")
        wait_for(lambda: beat() > first, 10, "a second heartbeat")
    last = beat()
    time.sleep(0.2)
    assert beat() == last  # stopped with the block

    real, calls = study._storage.set_trial_user_attr, []

    def flaky(*args):  # the storage out of reach for the first beat
        calls.append(args)
        if len(calls) == 1:
            raise OSError("connection reset")
        return real(*args)

    study._storage.set_trial_user_attr = flaky
    with heartbeat(study, trial._trial_id, every_s=0.05):
        wait_for(lambda: len(calls) >= 3, 10, "beats after a failed one")  # it went on
        assert "heartbeat not written; trying again" in caplog.text
        study.tell(trial, state=TrialState.FAIL)  # another worker marked it stale
        beats = len(calls)
        time.sleep(0.3)
    assert len(calls) <= beats + 1  # at most one more try, which found the trial finished: the thread stopped


@pytest.mark.parametrize("answer, code, running", [
    ("JobId=7 JobState=RUNNING Restarts=0", 0, True),
    ("JobId=7 JobState=RUNNING Restarts=1", 0, False),  # requeued: another run of the job
    ("JobId=7 JobState=SUSPENDED Restarts=0", 0, True),  # resumes where it stopped
    ("JobId=7 JobState=COMPLETED Restarts=0", 0, False),
    ("slurm_load_jobs error: Invalid job id specified", 1, False),  # purged: long finished
    ("slurm_load_jobs error: Socket timed out on send/recv operation", 1, None),  # busy controller: unknown
])
def test_slurm_tells_a_running_job_from_a_gone_one_and_says_nothing_when_unsure(tmp_path, monkeypatch, answer,
                                                                                 code, running):
    from effscale import slurm

    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho '{answer}' >&2\necho '{answer}'\nexit {code}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert slurm.job_running("7.0") is running


# --- local workers --------------------------------------------------------------------------------


def test_two_local_workers_train_each_grid_point_exactly_once(tmp_path):
    done = run_cli("search", *TINY, f"out={tmp_path}", "name=two", "search.workers=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "worker 0:" in done.stdout or "worker 1:" in done.stdout  # one may have found every point taken
    assert_each_point_once(tmp_path / "two", study_trials(f"sqlite:///{tmp_path}/two/study.db", "two"))


def test_a_user_error_met_by_two_workers_in_training_is_one_line_and_exit_2(tmp_path):
    import reliability_scenarios as rs

    # data.verify=false: the cut-off image is met in the first batch that holds it, in both workers.
    images = rs.image_folder(tmp_path / "images", per_class=12, corrupt=1)
    tiny = [o for o in TINY if not o.startswith("data.")]
    done = run_cli("search", *tiny, f"out={tmp_path}", "name=bad", "search.workers=2", "data=imagefolder",
                   f"data.root={images}", "data.verify=false", "data.num_workers=0", "data.resolution=16",
                   "data.native_resolution=16", "data.batch_size=8")
    assert done.returncode == 2, done.stderr[-3000:]
    assert re.fullmatch(rf"effscale search: {images}/red/0\.png: unreadable image \(.*\); data\.verify=true skips "
                        r"such files\n", done.stderr), done.stderr
    trials = study_trials(f"sqlite:///{tmp_path}/bad/study.db", "bad")
    assert trials and {(t.state, t.user_attrs["stale"]) for t in trials} == {(TrialState.FAIL, True)}  # run again


WORKERS_OF_A_USER_ERROR = ["""import os, sys
open(os.environ["EFFSCALE_WORKER_LAST_LINE"], "w").write("data.root: no images\\n")
sys.exit(2)
""", """import os, signal, sys, time
def stop(*_):
    open(os.environ["EFFSCALE_WORKER_LAST_LINE"], "w").write("worker 1: interrupted\\n")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
time.sleep(60)
"""]


def test_a_worker_that_ends_on_a_user_error_stops_the_others_and_its_line_is_raised_once(capfd):
    from effscale.errors import UserError
    from effscale.workers import run_workers

    started = time.monotonic()
    with pytest.raises(UserError, match=r"^data\.root: no images$"):
        run_workers([[sys.executable, "-c", code] for code in WORKERS_OF_A_USER_ERROR], stop_s=20)
    assert time.monotonic() - started < 15  # the sleeper was stopped, not waited for
    assert capfd.readouterr().err == ""  # the stopped worker's "interrupted" is not news


@pytest.mark.slow  # ~45 s: trials long enough to be interrupted inside one
def test_ctrl_c_sent_to_the_search_alone_reaches_its_workers_and_leaves_no_trial_running(tmp_path):
    import reliability_scenarios as rs

    rc, stderr, _ = rs.search_until(tmp_path, "w2", complete=1, sig=rs.INTERRUPT,
                                    extra=("search.workers=2", "data.train_size=2048", "trainer.max_epochs=2"))
    assert rc == 130 and stderr.strip().splitlines()[-1] == "effscale search: interrupted"
    assert "Traceback" not in stderr and "worker 0: interrupted" in stderr
    trials = rs.study_trials(tmp_path / "w2")
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert [t.user_attrs["reason"] for t in trials if t.state == TrialState.FAIL] in (["interrupted"] * 2, ["interrupted"])


# A worker that counts the SIGINTs it hears and takes 3 s to wind down after the first: longer than a
# Ctrl-C at a terminal (which reaches a whole process group) took to be passed on again to workers in
# the search's own group.
SLOW_TO_STOP = """import signal, sys, time
heard = []
signal.signal(signal.SIGINT, lambda *_: heard.append(1))
open(sys.argv[1] + ".ready", "w").close()
while not heard:
    time.sleep(0.05)
open(sys.argv[1] + ".heard", "w").close()
time.sleep(3)
open(sys.argv[1], "w").write(str(len(heard)))
sys.exit(130)
"""

RUN_WORKERS = """import signal, sys
from effscale.workers import run_workers
if sys.argv[3] == "nohup":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
try:
    run_workers([[sys.executable, "-c", sys.argv[1], f"{sys.argv[2]}/{i}"] for i in range(2)])
except KeyboardInterrupt:
    sys.exit(130)
"""


def start_run_workers(tmp_path, how="plain"):
    import reliability_scenarios as rs

    search = subprocess.Popen([sys.executable, "-c", RUN_WORKERS, SLOW_TO_STOP, str(tmp_path), how], cwd=REPO,
                              start_new_session=True,  # a group of its own, like a command at a terminal
                              preexec_fn=rs.hear_ctrl_c)
    wait_for(lambda: all((tmp_path / f"{i}.ready").exists() for i in range(2)), 60, "the workers start", search)
    return search


@pytest.mark.parametrize("stop", ["ctrl-c at the terminal", "SIGTERM", "SIGHUP"])
def test_a_stop_reaches_each_local_worker_exactly_once(tmp_path, stop):
    search = start_run_workers(tmp_path)
    if stop == "ctrl-c at the terminal":
        os.killpg(search.pid, signal.SIGINT)  # what the terminal does: the whole foreground group
    else:
        search.send_signal(getattr(signal, stop))
    assert search.wait(timeout=30) == 130
    assert [(tmp_path / str(i)).read_text() for i in range(2)] == ["1", "1"]


def test_a_hang_up_leaves_a_search_under_nohup_running(tmp_path):
    search = start_run_workers(tmp_path, "nohup")
    os.killpg(search.pid, signal.SIGHUP)
    time.sleep(1)
    assert search.poll() is None and not list(tmp_path.glob("*.heard"))  # no worker was told to stop
    search.send_signal(signal.SIGINT)
    assert search.wait(timeout=30) == 130


@pytest.mark.parametrize("started", ["at a terminal", "in the background"])
def test_a_worker_stopped_while_it_still_imports_says_interrupted_without_a_traceback(tmp_path, started):
    import reliability_scenarios as rs

    # An `optuna` that stops half-way through the worker's imports, as they do for a second or two.
    (tmp_path / "optuna").mkdir()
    (tmp_path / "optuna" / "__init__.py").write_text(
        f"import pathlib, time\npathlib.Path({str(tmp_path / 'importing')!r}).touch()\ntime.sleep(60)\n")
    # A search a script starts with `&` has SIGINT ignored, and its workers with it unless they undo that.
    worker = subprocess.Popen([sys.executable, "-m", "effscale.worker_process", "3", "logger=csv"], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(tmp_path)}, stderr=subprocess.PIPE, text=True,
                              preexec_fn=rs.hear_ctrl_c if started == "at a terminal" else rs.ignore_ctrl_c)
    wait_for(lambda: (tmp_path / "importing").exists(), 60, "the worker imports optuna", worker)
    worker.send_signal(signal.SIGINT)  # what run_workers passes on
    assert worker.wait(timeout=30) == 130
    assert worker.stderr.read() == "effscale search: worker 3: interrupted\n"


def test_the_folder_a_killed_search_left_its_workers_last_lines_in_is_removed_by_the_next(tmp_path, monkeypatch):
    import tempfile

    from effscale.workers import run_workers

    from effscale.liveness import this_process

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout)
    here = this_process()
    ours = f"effscale-workers-{here['host']}.{''.join(c for c in here['pid_ns'] if c.isdigit())}."
    left = tmp_path / f"{ours}{ended}-k1lled"  # its search is gone
    running = tmp_path / f"{ours}{os.getpid()}-running"  # another search's, still running
    elsewhere = tmp_path / f"effscale-workers-{here['host']}.1.{ended}-other"  # another pid namespace's
    for folder in (left, running, elsewhere):
        folder.mkdir()
        (folder / "0").write_text("interrupted\n")
    assert run_workers([[sys.executable, "-c", "pass"]]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, elsewhere.name])


def test_a_worker_whose_last_lines_folder_is_gone_says_its_last_line_on_stderr(tmp_path, monkeypatch, capsys):
    from effscale.workers import LAST_LINE, last_line

    monkeypatch.setenv(LAST_LINE, str(tmp_path / "gone" / "0"))
    last_line("worker 0: interrupted")
    assert capsys.readouterr().err == "effscale search: worker 0: interrupted\n"


def test_a_worker_that_cannot_start_stops_those_already_started(tmp_path):
    from effscale.workers import run_workers

    marker = f"effscale-test-{uuid.uuid4()}"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", marker]
    with pytest.raises(FileNotFoundError):
        run_workers([sleeper, [str(tmp_path / "no-such-program")]], stop_s=10)

    def running() -> bool:
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                if marker.encode() in path.read_bytes():
                    return True
        return False

    wait_for(lambda: not running(), 10, "the started worker stops")


def test_worker_killed_mid_trial_then_relaunch_finishes_the_grid_without_losing_or_repeating_a_trial(tmp_path):
    storage = f"sqlite:///{tmp_path}/killed/study.db"
    overrides = [*TINY, f"out={tmp_path}", "name=killed"]
    log = tmp_path / "worker.log"
    with open(log, "w") as out:  # a file, not a pipe no one reads while it trains
        worker = subprocess.Popen([sys.executable, "-m", "effscale.worker_process", "0", *overrides], cwd=REPO,
                                  stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: running_after_a_complete(storage, "killed"), 180, "a second trial", worker, log)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    before = study_trials(storage, "killed")  # as the kill left them
    finished = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    killed = [t.number for t in before if t.state == TrialState.RUNNING and "point" in t.user_attrs]
    assert finished and killed

    done = run_cli("search", *overrides, "search.workers=2")
    assert done.returncode == 0, done.stderr[-3000:]
    after = study_trials(storage, "killed")
    assert {t.number: t.value for t in after if t.number in finished} == finished  # kept, not re-run
    assert all(after[n].state == TrialState.FAIL and after[n].user_attrs["stale"] for n in killed)
    assert_each_point_once(tmp_path / "killed", after)


def test_submitit_local_launcher_runs_two_worker_jobs_on_a_journal_file_into_one_sweep_folder(tmp_path):
    journal = tmp_path / "shared" / "study.journal"
    done = run_cli("search", "-m", "hydra/launcher=submitit_local", "search.workers=2", *TINY,
                   f"search.storage=journal://{journal}", f"out={tmp_path}", "name=local")
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "local"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="local", storage=storage).get_trials()
    assert_each_point_once(sweep, trials)
    assert len(list((sweep / "logs" / "local").glob("*/*_log.out"))) == 2  # one submitit log per job
    assert not (sweep / "logs" / "local" / "%j").exists()  # only the jobs' folders, not submitit's pattern
    # The jobs' output is in their logs; the launching terminal follows their trials through the study.
    followed = [line for line in done.stdout.splitlines() if re.match(r"\[\d+/\d+\] α=", line)]
    assert len(followed) == sum(t.state.name == "COMPLETE" for t in trials) > 0, done.stdout
    assert followed[-1].startswith(f"[{len(followed)}/")
    assert sorted(p.name for p in (sweep / "logs" / "hydra").iterdir() if p.is_dir()) == ["0", "1"]


def test_slurm_workers_on_the_default_sqlite_study_are_refused_in_one_line(tmp_path):
    done = run_cli("search", "-m", "hydra/launcher=submitit_slurm", "search.workers=2", f"out={tmp_path}")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "search.storage" in done.stderr and "postgresql" in done.stderr
    assert not (tmp_path / "default").exists()


def fake_sbatch(tmp_path, message: str) -> dict[str, str]:
    """A PATH on which sbatch refuses every job with `message` (and srun, which submitit looks for, is there)."""
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    fake.chmod(0o755)
    (fake.parent / "srun").symlink_to(fake)
    return {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}


def test_jobs_sbatch_refuses_are_one_line_with_its_reason_and_leave_no_sweep(tmp_path):
    env = fake_sbatch(tmp_path, "sbatch: error: Invalid generic resource (gres) specification")
    done = run_cli("search", "-m", "+sweep=slurm", "search.workers=1", *TINY, f"out={tmp_path / 'out'}",
                   "name=refused", env=env)
    assert done.returncode == 2
    assert done.stderr == (
        "effscale search: hydra/launcher=submitit_slurm: sbatch refused the jobs (sbatch: error: Invalid generic "
        "resource (gres) specification); for nodes without GPUs set cluster.gpus_per_node=0\n")
    assert not (tmp_path / "out").exists()  # the folder this launch made is gone again


def test_the_bare_slurm_launcher_says_its_jobs_get_submitits_defaults_and_a_refusal_leaves_no_journal(tmp_path):
    env = fake_sbatch(tmp_path, "sbatch: error: Batch job submission failed")
    journal = tmp_path / "shared" / "study.journal"
    done = run_cli("search", "-m", "hydra/launcher=submitit_slurm", "search.workers=1", *TINY,
                   f"out={tmp_path / 'out'}", f"search.storage=journal://{journal}", env=env)
    assert done.returncode == 2
    assert done.stderr == (
        "effscale search: note: jobs get submitit's defaults (60 min, no GPU, no requeue at the time limit); "
        "+sweep=slurm sizes them with cluster.* (or set hydra.launcher.*)\n"
        "effscale search: hydra/launcher=submitit_slurm: sbatch refused the jobs (sbatch: error: Batch job "
        "submission failed)\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "shared").exists()


def test_slurm_workers_on_an_sqlite_url_are_refused_in_one_line(tmp_path):
    done = run_cli("search", "-m", "hydra/launcher=submitit_slurm", "search.workers=2", f"out={tmp_path}",
                   f"search.storage=sqlite:///{tmp_path}/nfs/study.db")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "search.storage: an SQLite study is not safe for 2 SLURM workers" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_jobs_get_a_relative_storage_file_as_an_absolute_path(tmp_path, monkeypatch):
    from effscale.multirun import job_overrides

    monkeypatch.chdir(tmp_path)
    cfg = {"search": {"workers": 2, "storage": "journal://rel/study.journal"}, "trainer": {"threads": 1}}
    extra = job_overrides(cfg, "submitit_local", tmp_path / "out" / "s", [])
    assert f"search.storage=journal://{tmp_path}/rel/study.journal" in extra
    url = "postgresql+psycopg://user:secret@host/db"  # as typed, or from the environment: not repeated
    assert not any("secret" in o for o in job_overrides(cfg | {"search": {"workers": 2, "storage": url}},
                                                         "submitit_local", tmp_path / "out" / "s", []))


def test_the_slurm_launcher_where_there_is_no_slurm_is_one_line_before_anything_is_written(tmp_path):
    bare = tmp_path / "bin"  # a PATH without srun
    bare.mkdir()
    done = run_cli("search", "-m", "+sweep=slurm", f"out={tmp_path / 'out'}", env={"PATH": str(bare)})
    assert done.returncode == 2
    assert done.stderr == ("effscale search: hydra/launcher=submitit_slurm: no SLURM on this machine (srun is not "
                           "on PATH); run this on a login node, or use hydra/launcher=submitit_local here\n")
    assert not (tmp_path / "out").exists()


def test_tpe_with_multirun_is_refused_in_one_line_before_anything_is_written(tmp_path):
    done = run_cli("search", "-m", "search=tpe", "search.workers=1", f"out={tmp_path}")
    assert done.returncode == 2
    assert done.stderr.startswith("effscale search: search.sampler=tpe: workers share a grid search only")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "default").exists()


def test_bad_launcher_with_multirun_is_one_line_and_exit_2(tmp_path):
    done = run_cli("search", "-m", "hydra/launcher=no_such_launcher", f"out={tmp_path}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "hydra/launcher" in done.stderr


# --- SLURM and PostgreSQL -------------------------------------------------------------------------

SLURM = ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]
LONGER = ["data.train_size=1024", "trainer.max_epochs=2"]  # trials long enough to be interrupted mid-way


@pytest.mark.slurm
@pytest.mark.postgres
def test_two_slurm_jobs_on_postgres_train_each_point_once_with_logs_and_wandb_runs_in_the_sweep_folder(
        tmp_path, slurm_cluster, postgres_url):
    name = f"slurm-{uuid.uuid4().hex[:8]}"
    overrides = [*TINY, "logger=wandb"]
    # The URL comes from the environment, so the password is in no override that Hydra prints or saves.
    done = run_cli("search", *SLURM, "search.workers=2", "search.storage=${oc.env:EFFSCALE_STORAGE}", *overrides,
                   f"out={tmp_path}", f"name={name}", env={"WANDB_MODE": "offline", "EFFSCALE_STORAGE": postgres_url})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    sweep = tmp_path / name
    password = postgres_url.split(":")[2].split("@")[0]
    assert f":{password}@" not in done.stdout + done.stderr
    assert not [p for p in sweep.rglob("*") if p.is_file() and f":{password}@".encode() in p.read_bytes()]
    trials = study_trials(postgres_url, name)
    assert_each_point_once(sweep, trials)
    jobs = {t.user_attrs["slurm_job"] for t in trials if t.state == TrialState.COMPLETE}
    assert len(list((sweep / "logs" / "slurm").glob("*/*_log.out"))) == 2
    assert not (sweep / "logs" / "slurm" / "%j").exists()
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == POINTS  # one W&B run per trained trial
    # the dashboard finds the study here; the password stays out of the results folder
    recorded = (sweep / "storage.txt").read_text().strip()
    assert jobs and recorded == postgres_url.replace(":effscale@", "@") and recorded != postgres_url


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.slow
def test_scancel_mid_trial_then_relaunch_finishes_the_grid_without_losing_or_repeating_a_trial(
        tmp_path, slurm_cluster, postgres_url):
    name = f"scancel-{uuid.uuid4().hex[:8]}"
    args = [*SLURM, "search.workers=2", f"search.storage={postgres_url}", *TINY, *LONGER, f"out={tmp_path}",
            f"name={name}"]
    search = background_cli("search", *args)
    try:
        # scancel sends SIGTERM, which submitit lets pass, and SIGKILL KillWait (5 s) later: cancel a trial
        # that has just started (a LONGER trial takes over 10 s), so that it cannot finish in between.
        def trial_to_cancel():
            trials = running_after_a_complete(postgres_url, name)
            return trials if _just_started(trials) else None

        before = wait_for(trial_to_cancel, 240, "a trial to cancel", search)
        victim = _just_started(before)[0]
        subprocess.run(["scancel", victim.user_attrs["slurm_job"].split(".")[0]], check=True)
        search.wait(timeout=600)  # a requeued or relaunched job imports, plans and trains again
    finally:
        search.kill()
    assert search.returncode == 1  # the cancelled job produced no result: the command says so

    finished = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    done = run_cli("search", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    after = study_trials(postgres_url, name)
    assert {t.number: t.value for t in after if t.number in finished} == finished
    assert after[victim.number].state == TrialState.FAIL and after[victim.number].user_attrs["stale"]
    assert_each_point_once(tmp_path / name, after)


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.slow
def test_requeued_slurm_job_runs_its_interrupted_trial_again(tmp_path, slurm_cluster, postgres_url):
    """`scontrol requeue` is what preemption does (and what submitit does at the time limit, after
    USR2): the job restarts with the same id and SLURM_RESTART_COUNT=1, and re-runs its trial."""
    name = f"requeue-{uuid.uuid4().hex[:8]}"
    search = background_cli("search", *SLURM, "search.workers=1", f"search.storage={postgres_url}", *TINY, *LONGER,
                            f"out={tmp_path}", f"name={name}")
    try:
        before = wait_for(lambda: running_after_a_complete(postgres_url, name), 240, "a trial to requeue", search)
        victim = next(t for t in before if t.state == TrialState.RUNNING and t.user_attrs.get("slurm_job"))
        job_id = victim.user_attrs["slurm_job"].split(".")[0]
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        search.wait(timeout=600)  # a requeued or relaunched job imports, plans and trains again
    finally:
        search.kill()
    output = search.stdout.read()
    assert search.returncode == 0, output[-3000:]
    after = study_trials(postgres_url, name)
    assert after[victim.number].state == TrialState.FAIL and after[victim.number].user_attrs["stale"]
    rerun = [t for t in after if t.state == TrialState.COMPLETE and t.user_attrs["point"] == victim.user_attrs["point"]]
    assert [t.user_attrs["slurm_job"] for t in rerun] == [f"{job_id}.1"]  # the same job, restarted once
    assert_each_point_once(tmp_path / name, after)


def test_a_trial_that_finishes_while_it_is_being_marked_stale_is_left_as_it_finished():
    from effscale.liveness import mark_stale

    study = optuna.create_study()
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]  # read while RUNNING
    study.tell(trial, 0.5)  # its worker was alive after all
    assert mark_stale(study, frozen) is False
    [after] = study.get_trials()
    assert after.state == TrialState.COMPLETE and after.value == 0.5 and "stale" not in after.user_attrs


def test_the_trials_of_a_multirun_are_counted_past_the_total_foreseen_without_passing_it(capsys):
    """Extra seeds for a point that moved up among the best come after the total `counts` foresees:
    the launching process's lines then read [9/9], not [9/8]."""
    from effscale.multirun import trials_followed

    attrs = {"alpha": 1.0, "beta": 1.0, "gamma": 1.4, "seed": 0, "resolution": 36, "macs_ratio": 2.0, "val_acc": 0.5}
    study = optuna.create_study()
    search = SimpleNamespace(study=study, counts=lambda: (0, 2))
    with trials_followed(search, every_s=60):  # only its last look, at the end, sees the trials
        for _ in range(3):
            study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=attrs))
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["[1/2]", "[2/2]", "[3/3]"]
