"""Wall time of one grid search with 2 workers against 1 worker, every worker on 1 thread.

Both sides run `effscale search` on the same small grid (8 points, 1 epoch on procedural data, CSV
logs) in a fresh sweep folder, alternating 1-worker and 2-worker runs. The time compared is the
study's training span, from the first trial's start to the last trial's end: planning the grid
(measuring every candidate, the same on both sides, done again by each worker process) is left out
and printed beside it.

    .venv/bin/python benchmarks/workers.py              # the median of three pairs, ~4 minutes on 2 idle cores
    .venv/bin/python benchmarks/workers.py --repeats 1  # one pair, ~1.5 minutes
    .venv/bin/python benchmarks/workers.py --quick      # smoke run: a quarter of the images

Last line: the median 2-worker / 1-worker ratio of training wall time (ideal 0.5, target <= 0.55).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from _timing import REPO, log, verdict

GRID = ["logger=csv", "data.train_size=512", "data.val_size=128", "data.test_size=128", "data.batch_size=64",
        "trainer.max_epochs=1", "search.top_k=0", "search.grid.alpha=[1.0,1.3]", "search.grid.beta=[1.0,1.1]",
        "search.grid.step=0.1", "budget.macs_tolerance=1.5", "trainer.threads=1"]


# --quick: the same 8 points on a quarter of the images, a smoke run of the two code paths.
QUICK = ("data.train_size=128", "data.val_size=64", "data.test_size=64")


def run(workers: int, out: Path, extra: tuple[str, ...] = ()) -> tuple[float, float, int]:
    """(training span s, command wall s, trials) of one search with `workers` workers."""
    name = f"w{workers}-{time.time_ns()}"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "effscale.cli", "search", *GRID, *extra, f"out={out}",
                           f"name={name}", f"search.workers={workers}"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"effscale search failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'study.db'}")
    trials = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return span, wall, len(trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="1-worker/2-worker pairs, in alternating order (default 3; the median is taken)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a quarter of the images")
    args = parser.parse_args()
    extra = QUICK if args.quick else ()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="effscale-workers-") as tmp:
        for i in range(args.repeats):  # A B, B A, ...: a change of load during the run falls on both sides
            if i % 2:
                two, two_wall, n2 = run(2, Path(tmp), extra)
                one, one_wall, n1 = run(1, Path(tmp), extra)
            else:
                one, one_wall, n1 = run(1, Path(tmp), extra)
                two, two_wall, n2 = run(2, Path(tmp), extra)
            assert n1 == n2, (n1, n2)
            log(f"{n1} trials: 1 worker {one:.1f} s training ({one_wall:.0f} s command), "
                f"2 workers {two:.1f} s training ({two_wall:.0f} s command); "
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            ratios.append(two / one)
    ratios.sort()
    verdict("2 workers / 1 worker training wall time", ratios[len(ratios) // 2], "<=", 0.55,
            "(smoke run)" if args.quick else "")


if __name__ == "__main__":
    main()
