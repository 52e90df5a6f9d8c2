"""Several workers on one search: `search.workers=N`.

Each worker is a process with its own thread budget that plans the same grid, opens the same Optuna
study and trains whatever (point, seed) nobody else holds, until every one is settled. Workers are
local processes (`effscale search search.workers=2`) or one Hydra multirun job each
(`effscale search -m hydra/launcher=submitit_slurm search.workers=16`, see effscale/multirun.py).

Claiming a point: see effscale/claims.py.

Faults. A trial whose worker died (SIGKILL, scancel, preemption, a requeued SLURM job) stays RUNNING
until a worker or the next launch finds it abandoned — its process gone on this host (and in this
pid namespace: containers that share a host name are told apart), its SLURM job
no longer running it (effscale/slurm.py), or no heartbeat (one a minute, from a thread beside the
training) for `search.stale_after_s` — marks it FAIL (stale) and trains its point again. Idle workers
keep watching while others train, so a survivor takes over a dead worker's point. A trial that raises
or reaches a non-finite loss is recorded FAIL with its reason by `Search.fit`, and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from effscale import slurm
from effscale.claims import claim, holders, owner
from effscale.config import load, model_table
from effscale.devices import available_cores, resolve_device
from effscale.errors import UserError, output_closed
from effscale.liveness import alive, fail_stale_trials, mark_stale, this_process
from effscale.search import Job, Search
from effscale.stops import interrupts_deferred, stops_as_interrupt
from effscale.storages import absolute, without_password

if TYPE_CHECKING:
    import pandas as pd

POLL_S = 5.0          # how often an idle worker looks for abandoned trials while others train
SLURM_CHECK_S = 60.0  # how often a worker asks SLURM whether the jobs of RUNNING trials still run
WAIT_S = 0.2          # how often `run_workers` looks whether a worker has ended
USER_ERROR = 2        # a worker's exit status for a UserError (the CLI's, for bad input)
LAST_LINE = "EFFSCALE_WORKER_LAST_LINE"  # the file a worker started by `run_workers` leaves its last line in


def local_threads(workers: int) -> int:
    """Each of `workers` processes on this machine gets an equal share of its cores."""
    return max(1, available_cores() // workers)


def fail_abandoned(study: optuna.Study, stale_after_s: float, ask_slurm: bool = True) -> int:
    """Mark FAIL (stale) every trial nobody works on any more, so that its point runs again: with
    `ask_slurm`, those of SLURM jobs that ended or were requeued; then those `liveness.is_stale` finds."""
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if ask_slurm else []:
        job = t.user_attrs.get("slurm_job")
        if job and job != slurm.current_job() and slurm.job_running(job) is False and mark_stale(study, t):
            count += 1
    return count + fail_stale_trials(study, stale_after_s)


# --- one worker -----------------------------------------------------------------------------------


class Worker:
    """Worker `index` of a search: trains unclaimed points until every one is settled."""

    def __init__(self, search: Search, index: int) -> None:
        self.search, self.index = search, index
        # Failures of earlier launches run again once; this launch's own failures stand. The launch
        # begins where the `search` command that started it opened the study, however late this starts.
        self.retry_below = search.retry_below
        self.asked_slurm = 0.0

    def run(self) -> None:
        with self.search.abandoned_on_stop():
            self.run_jobs(self.search.first_jobs(), "grid points")
            # Every worker waits for the whole grid, so all of them pick the same best points.
            self.search.run_seed_rounds(lambda jobs: self.run_jobs(jobs, "extra seeds for the best points"))

    def run_jobs(self, jobs: list[Job], label: str) -> None:
        while True:
            self.take_over_abandoned()
            held = holders(self.search.study.get_trials(deepcopy=False))
            owners = {job.key: owner(held.get(job.key, []), self.retry_below) for job in jobs}
            unsettled = [j for j in jobs if owners[j.key] is None or not owners[j.key].state.is_finished()]
            keys = {j.key for j in jobs}
            free = [j for j in unsettled if owners[j.key] is None and not self.waits(j, held, keys)]
            if not unsettled:
                return
            if not free:
                time.sleep(POLL_S)  # the rest is being trained; stay to take over if a worker dies
                continue
            # Start at a different point in each worker, so that claims rarely collide.
            job = free[self.index % len(free)]
            trial = self.search.begin(lambda: claim(self.search, job, self.retry_below))
            if trial is not None:
                started = sum(o is not None for o in owners.values()) + 1  # other workers' included
                self.search.train(trial, job, f"[{label} {started}/{len(jobs)}]")  # after "worker N: "

    def waits(self, job: Job, held: dict[tuple[str, int], list[FrozenTrial]], keys: set[tuple[str, int]]) -> bool:
        """Whether `job`'s point repeats the network of a point not settled yet: it records that
        point's result once there is one (`Search.train`), rather than training the network twice.
        Never for a point no job of `keys` settles: it would wait for ever, and trains itself instead."""
        if not job.candidate.same_as:
            return False
        other = (job.candidate.same_as, job.seed)
        first = owner(held.get(other, []), self.retry_below)
        if first is None and other not in keys:
            return False
        return first is None or not first.state.is_finished()

    def take_over_abandoned(self) -> None:
        # scontrol once a minute per worker at most: hundreds of workers must not flood slurmctld.
        ask_slurm = time.monotonic() - self.asked_slurm > SLURM_CHECK_S
        if ask_slurm:
            self.asked_slurm = time.monotonic()
        taken = fail_abandoned(self.search.study, self.search.stale_after_s, ask_slurm)
        if taken:
            self.search.say(f"{taken} abandoned trial(s) marked FAIL (stale): their points run again")


def work(cfg: dict[str, Any], index: int) -> None:
    """Plan the sweep, open its study and work as worker `index` until the grid is done."""
    say = lambda line: print(f"worker {index}: {line}", flush=True)  # noqa: E731
    search = Search(cfg, model_table(cfg), resolve_device(cfg["device"]), say=say, shared=True)
    search.plan()
    search.open(new_launch=False)
    Worker(search, index).run()


# --- local processes ------------------------------------------------------------------------------


def record_storage(search: Search) -> None:
    """Write `search.storage` to the sweep folder's storage.txt, where `effscale dashboard` looks for
    it. An RDB URL's password is left out, so no secret lands in the results folder: the dashboard's
    driver takes it from the usual place (PGPASSWORD or ~/.pgpass for PostgreSQL)."""
    url = search.opts.get("storage")
    if url:
        (search.sweep_dir / "storage.txt").write_text(without_password(absolute(url), masked=False) + "\n")


def open_launch(search: Search) -> None:
    """Open the study of a launch (`effscale search`, with or without -m) before any worker starts,
    print its plan, and record where a non-default storage is (`record_storage`)."""
    search.open()
    print(search.describe_plan())
    record_storage(search)


def run_local(search: Search, overrides: list[str], workers: int) -> tuple["pd.DataFrame", int]:
    """`search.workers=N` on this machine, after `search` planned the sweep and opened its study:
    N processes `python -m effscale.worker_process I OVERRIDES`, each with an equal share of the cores
    unless `trainer.threads` says otherwise. Returns the results table once all have ended, and how
    many workers failed."""
    from effscale import results

    if not search.recipe.get("threads"):
        overrides = [*overrides, f"trainer.threads={local_threads(workers)}"]
    commands = [[sys.executable, "-m", "effscale.worker_process", str(i), *overrides] for i in range(workers)]
    failed = run_workers(commands)
    return results.read_trials(search.table), failed


def run_workers(commands: list[list[str]], stop_s: float = 30.0) -> int:
    """Run one worker process per command until all have ended; how many failed. Each worker has a
    session of its own, so a Ctrl-C at the terminal, a hang-up or a SIGTERM reaches this process
    alone, which passes it on to each worker once, as a SIGINT (a second one could cut short the
    record of the interrupted trial), and raises KeyboardInterrupt. A worker that ends on a UserError
    (a corrupt image found in training, say) stops the others the same way, and its error is raised
    here, once: every worker would have met it. Anything else that ends this process's wait (a worker
    that cannot start) stops the started workers too and is raised. A worker still running `stop_s`
    later, or at a second stop signal, is terminated with the processes it started.

    A worker leaves its last line (its UserError, or that it was interrupted) in a file (`LAST_LINE`),
    and this process prints those that are news: each worker's "interrupted" after a stop, but not
    those of the workers it stopped because another met a UserError."""
    procs: list[subprocess.Popen] = []
    with stops_as_interrupt(), _last_lines_folder() as folder:
        lines = [Path(folder, str(i)) for i in range(len(commands))]
        try:
            for command, line in zip(commands, lines):
                with interrupts_deferred():  # a worker that was started is one `_stop` knows of
                    procs.append(subprocess.Popen(command, start_new_session=True, preexec_fn=_stop_with(os.getpid()),
                                                  env=os.environ | {LAST_LINE: str(line)}))
            while True:
                error = next((line for p, line in zip(procs, lines) if p.poll() == USER_ERROR and line.exists()), None)
                if error is not None:
                    raise UserError(error.read_text().strip())
                if all(p.returncode is not None for p in procs):
                    break
                time.sleep(WAIT_S)
        except UserError:
            _stop(procs, stop_s)
            raise
        except BaseException:
            _stop(procs, stop_s)
            _print_last_lines(lines)
            raise
        _print_last_lines(lines)
        return sum(p.returncode != 0 for p in procs)


LAST_LINES = "effscale-workers-"  # `run_workers`'s temporary folders: effscale-workers-<host>.<pid namespace>.<pid>-…


def _last_lines_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder for the workers' last lines, named for this process. Those of searches that
    ended without removing theirs (`kill -9`) are removed first: of this host and pid namespace, whose
    process is gone (a /tmp shared with other hosts or containers holds theirs too)."""
    here = this_process()
    ours = f"{LAST_LINES}{here['host']}.{''.join(c for c in here['pid_ns'] if c.isdigit())}."
    for folder in Path(tempfile.gettempdir()).glob(f"{ours}*"):
        pid = folder.name[len(ours):].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{ours}{here['pid']}-", ignore_cleanup_errors=True)


def _print_last_lines(lines: list[Path]) -> None:
    for line in lines:
        if line.exists():
            print(f"effscale search: {line.read_text().strip()}", file=sys.stderr)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with(parent: int) -> Callable[[], None] | None:
    """On Linux, what makes a worker get a SIGINT when the search command that started it dies
    (`kill -9`, the OOM killer): it winds down as on Ctrl-C, its trial marked stale, rather than
    training on with nobody to print or wait for it while a rerun starts more workers beside it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def in_the_worker() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
        if os.getppid() != parent:  # it died before the line above: do not start at all
            os._exit(130)

    return in_the_worker


def _stop(procs: list[subprocess.Popen], stop_s: float) -> None:
    try:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + stop_s
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)  # its group: the data loader's processes too


def main(argv: list[str]) -> int:
    index, overrides = int(argv[0]), argv[1:]
    try:
        work(load("search", overrides), index)
    except UserError as exc:
        last_line(f"worker {index}: {exc}", exc)
        return USER_ERROR
    except KeyboardInterrupt:  # its trial is recorded as interrupted; the search command says the rest
        last_line(f"worker {index}: interrupted")
        return 130
    except BrokenPipeError:  # the search's standard output, which every worker shares, closed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        output_closed(f"effscale search: worker {index}")
        return 1
    return 0


def last_line(line: str, error: UserError | None = None) -> None:
    """A worker's last line: to the `run_workers` that started it (an error bare, as the search command
    raises it), or on stderr where nothing did."""
    path = os.environ.get(LAST_LINE)
    try:
        if path:
            Path(path).write_text(f"{error if error is not None else line}\n")
            return
    except OSError:  # its folder gone with the search that started it (killed, and another search cleared it)
        pass
    print(f"effscale search: {line}", file=sys.stderr)
