"""Whether anybody still works on a RUNNING trial: who runs it (host, pid, pid namespace), the heartbeat
its process writes while it trains, and marking an abandoned one FAIL (`stale`) so that its point runs
again. What lets workers on several hosts, and a later launch, take over a dead worker's trial."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger("effscale.search")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_process() -> dict[str, Any]:
    """Who runs a trial, as its user attributes: host, pid, and the pid's namespace (containers that
    share a host name, or a restarted one, count their pids apart)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]" on Linux
    except OSError:
        namespace = ""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": namespace}


def is_stale(trial: FrozenTrial, stale_after_s: float) -> bool:
    """A trial nobody is working on: its process, when this one can see it (same host and pid
    namespace), is gone; else its heartbeat (`heartbeat`, below) is older than `stale_after_s`.
    Asked only while this process trains nothing, so a trial of this process's own pid is a dead
    one's whose pid came back."""
    attrs, here = trial.user_attrs, this_process()
    if attrs.get("pid") and (attrs.get("host"), attrs.get("pid_ns")) == (here["host"], here["pid_ns"]):
        return attrs["pid"] == here["pid"] or not alive(int(attrs["pid"]))
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return time.time() - float(attrs.get("heartbeat", started)) > stale_after_s


HEARTBEAT_S = 60.0  # at most this long between two heartbeats of a training trial


@contextmanager
def heartbeat(study: optuna.Study, trial_id: int, every_s: float) -> Iterator[None]:
    """Refresh the trial's `heartbeat` attribute every `every_s` seconds while the block runs, from a
    thread: an epoch may take hours (a large candidate on ImageNet), and a trial must not look
    abandoned to workers on other hosts while it trains. A write that fails (a storage briefly out of
    reach) is tried again at the next beat; once another worker has finished the trial (taken it
    over as stale) the thread stops, and the training thread's own next write tells it so."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return
            except Exception:
                log.warning("trial id %s: heartbeat not written; trying again in %.0f s", trial_id, every_s,
                            exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def mark_stale(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Mark a RUNNING or WAITING trial FAIL with user attribute `stale`, so that its point runs again;
    False if it finished meanwhile (its worker was alive after all, or another worker marked it first)."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
        if trial.state == TrialState.WAITING:  # Study.tell takes RUNNING trials only
            return study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return True


def fail_stale_trials(study: optuna.Study, stale_after_s: float) -> int:
    """Mark abandoned trials FAIL with user attribute `stale`, so that their jobs run again: RUNNING
    ones, and WAITING ones a process enqueued and died before asking for (searches before
    `Search.start_trial` enqueued theirs; a live process asks within milliseconds)."""
    count = 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        if is_stale(frozen, stale_after_s) and mark_stale(study, frozen):
            count += 1
    return count
