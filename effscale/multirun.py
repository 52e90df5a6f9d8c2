"""`effscale search -m …`: one Hydra multirun job per worker, through any Hydra launcher.

    effscale search -m +sweep=slurm search.workers=16 search.storage=postgresql+psycopg://…
    effscale search -m hydra/launcher=submitit_local search.workers=2     # the same path on one machine

The overrides are first composed and the sweep planned here, so that a bad override or an impossible
budget is one line and exit status 2 before anything is submitted, and the study exists before the
workers open it. Then a real Hydra app (conf/search.yaml) sweeps `+worker=range(0,N)`: job I runs
worker I of effscale/workers.py. Everything lands in the sweep folder `<out>/<name>/`: trials.csv,
the study, wandb/, Hydra's job folders in logs/hydra/ and submitit's logs in logs/slurm/<job id>/
(logs/local/ for submitit_local; an array job's id is <array id>_<task>).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import threading
import traceback
from contextlib import contextmanager, nullcontext, redirect_stderr, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from omegaconf import DictConfig, open_dict

from effscale.config import CONF_DIR, checked, compose, model_table, to_dict
from effscale.devices import resolve_device
from effscale.errors import UserError
from effscale.files import first_new_folder

if TYPE_CHECKING:
    from effscale.search import Search

MULTIRUN_FLAGS = ("-m", "--multirun")


def run_job(cfg: DictConfig) -> None:
    """The task of one Hydra job: worker `cfg.worker` of the search `cfg` describes."""
    from effscale.workers import work

    work(to_dict(cfg), int(cfg.worker))


@contextmanager
def sbatch_errors_held() -> Iterator[None]:
    """submitit prints what sbatch wrote on stderr before it raises; hold that back, so that a refused
    submission is one line (`submission_refused` quotes sbatch's reason in it). What a submission
    that went through printed is passed on."""
    from submitit.core import utils

    call = utils.CommandFunction.__call__

    def held(self, *args: Any, **kwargs: Any) -> Any:
        printed = io.StringIO()
        with redirect_stderr(printed):
            result = call(self, *args, **kwargs)
        sys.stderr.write(printed.getvalue())
        return result

    utils.CommandFunction.__call__ = held
    try:
        yield
    finally:
        utils.CommandFunction.__call__ = call


def submission_refused(exc: BaseException) -> str | None:
    """sbatch's own message when submitit could not submit (sbatch exited non-zero), else None."""
    import subprocess

    cause = exc.__cause__
    if isinstance(cause, subprocess.CalledProcessError) and "sbatch" in str(cause.cmd):
        lines = (cause.stderr or cause.output or "").strip().splitlines()
        return lines[-1] if lines else f"sbatch exited with status {cause.returncode}"
    return None


def check_storage(storage: str | None, launcher: str, workers: int) -> None:
    """SQLite takes file locks that network file systems honour badly: several SLURM jobs writing
    one study.db (the default, or one a sqlite:/// URL names) would corrupt it or fail with
    `database is locked`."""
    if launcher == "submitit_slurm" and workers > 1 and (not storage or storage.startswith("sqlite:")):
        which = "an SQLite study" if storage else "the default SQLite study.db"
        raise UserError(f"search.storage: {which} is not safe for {workers} SLURM workers "
                        "(file locks over NFS); set search.storage=journal:///shared/path/study.journal "
                        "or an RDB URL such as postgresql+psycopg://user:pass@host/db")


def job_overrides(cfg: dict[str, Any], launcher: str, sweep_dir: Path, overrides: list[str]) -> list[str]:
    """What the cli adds to the user's `overrides`: the worker sweep, absolute paths (jobs may start
    in another directory: `out`, and a journal or SQLite file `search.storage` names), and for workers
    sharing this machine, a share of its cores each."""
    from effscale.storages import absolute
    from effscale.workers import local_threads

    workers = int(cfg["search"]["workers"])
    extra = [f"out={sweep_dir.parent}", f"+worker=range(0,{workers})",
             f"hydra.sweep.dir={sweep_dir / 'logs' / 'hydra'}"]
    storage = cfg["search"].get("storage")
    if storage and absolute(storage) != storage:  # a relative file; any other URL stays as typed (no password)
        extra.append(f"search.storage={absolute(storage)}")
    if launcher.startswith("submitit_"):
        extra += [f"hydra.launcher.submitit_folder={job_logs(sweep_dir, launcher) / '%j'}",
                  f"hydra.launcher.name=effscale-{sweep_dir.name}"]  # what squeue shows
    if launcher == "submitit_local" and not any(o.startswith("hydra.launcher.timeout_min=") for o in overrides):
        extra.append("hydra.launcher.timeout_min=10080")  # submitit kills local jobs at 60 min by default
    if launcher != "submitit_slurm" and not cfg["trainer"].get("threads"):
        extra.append(f"trainer.threads={local_threads(workers)}")  # a SLURM job uses the CPUs it was given
    return extra


def multirun(overrides: list[str]) -> None:
    """`effscale search -m OVERRIDES`: check and plan here, then one Hydra job per worker."""
    from effscale import results
    from effscale.search import end_search, outcome

    overrides = [o for o in overrides if o not in MULTIRUN_FLAGS]
    cfg, launcher = checked_config(overrides)
    if launcher == "submitit_slurm" and "cluster" not in cfg and not any("hydra.launcher." in o for o in overrides):
        print("effscale search: note: jobs get submitit's defaults (60 min, no GPU, no requeue at the time "
              "limit); +sweep=slurm sizes them with cluster.* (or set hydra.launcher.*)", file=sys.stderr)
    search, new = planned_study(cfg)
    sweep_dir = search.sweep_dir.resolve()
    print(f"{search.opts['workers']} worker job(s) through hydra/launcher={launcher}; logs in {sweep_dir / 'logs'}",
          flush=True)
    # The basic launcher runs the jobs in this process, which prints their trials itself.
    with nullcontext() if launcher == "basic" else trials_followed(search):
        failed = launch(cfg, launcher, overrides, sweep_dir, search, new)
    table = results.read_trials(sweep_dir)
    print(outcome(table, sweep_dir, search.logger_kind))
    end_search(table, sweep_dir, "a worker job ended without finishing (cancelled, killed, or out of time and "
               "requeues); run the same command again to train what is left" if failed else None)


def checked_config(overrides: list[str]) -> tuple[dict[str, Any], str]:
    """The search config and the Hydra launcher the overrides name, refused in one line when they
    cannot work: a bad value, SQLite under SLURM workers, the SLURM launcher with no SLURM."""
    composed = compose("search", overrides, hydra=True)
    launcher = composed.hydra.runtime.choices.get("hydra/launcher", "basic")
    with open_dict(composed):
        del composed["hydra"]
    cfg = checked(to_dict(composed))
    check_storage(cfg["search"].get("storage"), launcher, int(cfg["search"]["workers"]))
    if launcher == "submitit_slurm" and not shutil.which("srun"):  # what submitit looks for
        raise UserError("hydra/launcher=submitit_slurm: no SLURM on this machine (srun is not on PATH); run "
                        "this on a login node, or use hydra/launcher=submitit_local here")
    return cfg, launcher


def planned_study(cfg: dict[str, Any]) -> tuple[Search, Path | None]:
    """The sweep planned and its study opened, before any job starts, and the first folder that made
    (removed again if nothing could be submitted). On CPU (a login node has no GPU), unless a latency
    or peak-memory budget needs `device`: this process measures those once for every worker."""
    from effscale.budget import bounds_device_costs
    from effscale.search import Search
    from effscale.workers import open_launch

    device = resolve_device(cfg["device"]) if bounds_device_costs(cfg["budget"]) else "cpu"
    search = Search(cfg, model_table(cfg), device, shared=True)
    search.plan()
    new = first_new_folder(search.sweep_dir)
    open_launch(search)
    return search, new


def job_logs(sweep_dir: Path, launcher: str) -> Path:
    """The folder of a submitit launcher's job logs, one folder a job (`%j`, its job id)."""
    return sweep_dir / "logs" / ("slurm" if launcher == "submitit_slurm" else "local")


def launch(cfg: dict[str, Any], launcher: str, overrides: list[str], sweep_dir: Path, search: Search,
           new: Path | None) -> Any:
    """Run the Hydra app that sweeps the workers; what failed (an exit code), or None. Submissions
    sbatch refuses are one line, with the empty study and folder removed again."""
    import hydra
    import optuna

    from effscale import slurm

    if launcher == "submitit_slurm":
        slurm.use_squeue_without_accounting()
    app = hydra.main(config_path=str(CONF_DIR), config_name="search", version_base="1.3")(run_job)
    argv = ["effscale-search", "--multirun", *overrides, *job_overrides(cfg, launcher, sweep_dir, overrides)]
    try:
        with hydra_argv(argv), sbatch_errors_held():
            app()
        return None
    except SystemExit as exc:
        return exc.code
    except UserError:  # a mistake a job found (the basic launcher runs them in this process)
        raise
    except Exception as exc:
        refused = submission_refused(exc)
        if refused:
            if not search.study.trials:  # nothing ran: leave no study, no new folder or journal behind
                optuna.delete_study(study_name=search.study.study_name, storage=search.study._storage)
                search.remove_created(new)
            hint = "; for nodes without GPUs set cluster.gpus_per_node=0" if "gres" in refused.lower() else ""
            raise UserError(f"hydra/launcher={launcher}: sbatch refused the jobs ({refused}){hint}") from None
        traceback.print_exc()  # a job that raised, or one the cluster killed
        return 1
    finally:
        with suppress(OSError):  # submitit also makes the folder pattern itself, a folder named %j, and leaves it empty
            (job_logs(sweep_dir, launcher) / "%j").rmdir()


FOLLOW_S = 15.0  # how often the launching process reads the study for trials the jobs finished


@contextmanager
def trials_followed(search: Search, every_s: float = FOLLOW_S) -> Iterator[None]:
    """Print each trial the worker jobs finish, as `effscale search` prints its own: their output goes
    to log files, and a sweep on a cluster runs for hours. Read from the study every `every_s`."""
    from effscale.search import trial_line

    done, total = search.counts()
    seen = {t.number for t in search.study.get_trials(deepcopy=False) if t.state.is_finished()}
    shown = threading.Lock()  # the last look, at the end, may run beside a late one of the thread's

    def show_new() -> None:
        nonlocal done, total
        trials = search.study.get_trials(deepcopy=False)
        with shown:
            for t in trials:
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    # a claim another worker won, or a trial given up as stale: its point is trained elsewhere
                    if not ({"repeat_of", "stale"} & set(t.user_attrs)) and "alpha" in t.user_attrs:
                        done += 1
                        # Extra seeds for a point that moved up among the best come beyond the total foreseen.
                        total = max(total, done)
                        print(trial_line(f"[{done}/{total}]", t), flush=True)

    def follow() -> None:
        while not stop.wait(every_s):
            with suppress(Exception):  # a storage that does not answer now: the next look tries again
                show_new()

    stop = threading.Event()
    thread = threading.Thread(target=follow, name="effscale-trials-followed", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(every_s)  # not for ever: a storage that hangs must not hold up the command's end
        with suppress(Exception):
            show_new()


@contextmanager
def hydra_argv(argv: list[str]) -> Iterator[None]:
    """`argv` for the Hydra app, and HYDRA_FULL_ERROR=1 so that Hydra raises what a launch raised
    rather than printing it and exiting 1; both as before afterwards."""
    saved, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = argv
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        sys.argv = saved
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
