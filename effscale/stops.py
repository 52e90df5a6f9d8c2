"""How a sweep process stops: which signals end it, how a stop waits for a storage write to finish, and
which exceptions end the sweep (a stop) rather than one trial (a failure)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from effscale.errors import UserError


def stop_signals() -> list[int]:
    """The signals that stop a search: Ctrl-C, SIGTERM, a hang-up, and the one submitit sends a SLURM
    job before its time limit or on a preemption (SIGUSR2, or what SUBMITIT_PREEMPT_SIGNAL names)."""
    submitit = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    return list(dict.fromkeys([signal.SIGINT, signal.SIGTERM, signal.SIGHUP, submitit]))


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A stop (`stop_signals`) during the block takes effect when the block is done. A
    KeyboardInterrupt in the middle of a storage write can leave SQLite's write lock with a connection
    nobody closes, and the writes that mark the interrupted trial stale then fail on "database is
    locked". Main thread only, where Python runs its signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    heard: list[int] = []
    saved: dict[int, Any] = {}
    try:  # a stop while the handlers are swapped finds each one that was swapped put back
        for signum in stop_signals():
            if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                saved[signum] = signal.signal(signum, lambda s, _frame: heard.append(s))
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(heard):  # each signal once, in the order they came
            if callable(saved[signum]):
                saved[signum](signum, None)
            elif saved[signum] == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


@contextmanager
def stops_as_interrupt() -> Iterator[None]:
    """SIGHUP and SIGTERM raise KeyboardInterrupt in the block, as Ctrl-C does, so that what a closed
    terminal, `kill` or SLURM's scancel stops is wound down as a Ctrl-C is; one this process ignores
    (SIGHUP under nohup) stays ignored."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    stops = [s for s in (signal.SIGHUP, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    saved = {s: signal.signal(s, interrupt) for s in stops}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def stop_reason(exc: BaseException) -> str | None:
    """Why `exc` ends this process's part of the sweep rather than one trial, as the reason its
    unfinished trial is recorded with; None for an exception that fails that trial alone. A stop is a
    Ctrl-C (and what `stops_as_interrupt` raises as one), an exit (submitit's on a SLURM preemption),
    submitit's UncompletedJobError at a job's last time limit, or a mistake that would fail every trial
    alike (a UserError)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    submitit = sys.modules.get("submitit.core.utils")  # loaded when a submitit job runs this process
    if submitit is not None and isinstance(exc, submitit.UncompletedJobError):
        return f"interrupted: {exc}"
    return None
