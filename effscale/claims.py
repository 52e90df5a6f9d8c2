"""Claiming a (point, seed) among workers that share one study (`search.workers=N`, effscale/workers.py).

Optuna's GridSampler hands the same point to workers that ask at the same moment, so workers claim
through the study instead. A claim is a RUNNING trial created in one write with its point and seed as
user attributes; the claimant then reads the study and keeps the point only if no finished trial holds
it and its own claim is the live one with the lowest trial id. Every worker sees the same trials and
applies the same rule, so exactly one keeps each point; a loser marks its trial FAIL with `repeat_of`
(the winner's number), which the results table leaves out, and moves on without training. Journal
files and SQLite serialise writes, so a trial with a lower id is already visible when the claimant
reads; PostgreSQL hands out ids before commit, so on an RDB the claimant reads again after
`CLAIM_SETTLE_S`, long after any earlier claim has committed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from effscale import slurm

if TYPE_CHECKING:
    import optuna

    from effscale.search import Job, Search

CLAIM_SETTLE_S = 1.0  # RDB only: far longer than the few statements of a trial-creating transaction


def holders(trials: list[FrozenTrial]) -> dict[tuple[str, int], list[FrozenTrial]]:
    """The trials that hold each (point, seed): finished or RUNNING, neither stale nor a repeat."""
    held: dict[tuple[str, int], list[FrozenTrial]] = {}
    for t in trials:
        a = t.user_attrs
        if "point" in a and not a.get("stale") and a.get("repeat_of") is None \
                and (t.state.is_finished() or t.state == TrialState.RUNNING):
            held.setdefault((a["point"], int(a["seed"])), []).append(t)
    return held


def owner(trials: list[FrozenTrial], retry_below: int | None = None) -> FrozenTrial | None:
    """The trial that owns a point among its holders: a finished one (the latest), else the RUNNING
    claim with the lowest trial id. With `search.retry_failed`, a FAILed trial older than this
    launch (trial id below `retry_below`) owns nothing, so its point runs once more."""
    finished = [t for t in trials if t.state.is_finished()
                and not (retry_below is not None and t.state == TrialState.FAIL and t._trial_id < retry_below)]
    if finished:
        return max(finished, key=lambda t: t._trial_id)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return min(running, key=lambda t: t._trial_id) if running else None


def claim(search: Search, job: Job, retry_below: int | None = None) -> optuna.Trial | None:
    """A RUNNING trial for `job` if this worker won its point, else None (the losing claim is
    recorded FAIL with `repeat_of`). See the module docstring for why exactly one wins."""
    trial = search.start_trial(job, **({"slurm_job": slurm.current_job()} if slurm.current_job() else {}))
    if _is_rdb(search):
        time.sleep(CLAIM_SETTLE_S)
    winner = owner(holders(search.study.get_trials(deepcopy=False)).get(job.key, []), retry_below)
    if winner is not None and winner._trial_id == trial._trial_id:
        return trial
    search.study._storage.set_trial_user_attr(trial._trial_id, "repeat_of", winner.number if winner else None)
    search.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return None


def _is_rdb(search: Search) -> bool:
    """PostgreSQL, MySQL: anything but the default SQLite file or a journal file."""
    url = search.opts.get("storage") or ""
    return bool(url) and not url.startswith(("journal://", "sqlite:"))
