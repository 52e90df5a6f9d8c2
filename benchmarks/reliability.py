"""Issue #8 end to end: every bad input of tests/reliability_scenarios.py through the `effscale` command,
then every fault injected into a running search, with a count of what held.

    .venv/bin/python benchmarks/reliability.py            # a few minutes on two cores

A bad input counts as a clear error when it exits 2 with one stderr line naming the key or file, no
traceback and nothing written. A fault counts as survived when the sweep went on (or resumed) as the
tests demand. "Trials lost" counts trials that were complete before a fault and are not the same complete
trial afterwards. The last line is the summary:

    N bad inputs, N clear errors, N faults survived, 0 trials lost
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import reliability_scenarios as rs  # noqa: E402  (the scenarios the tests run)


def corrupt_image_skipped(root: Path) -> tuple[bool, int, str]:
    from effscale.data import build_datamodule

    folder = rs.image_folder(root / "images", per_class=6, corrupt=1)
    cfg = {"name": "imagefolder", "root": str(folder), "val_fraction": 0.25, "num_classes": None, "in_channels": 3,
           "native_resolution": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "batch_size": 4, "num_workers": 0}
    data = build_datamodule(cfg, resolution=16, batch_size=4, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.setup("fit")
    seen = sum(len(y) for loader in (data.train_dataloader(), data.val_dataloader()) for _, y in loader)
    warned = any("skipped 1 unreadable" in str(w.message) for w in caught)
    return warned and seen == 11, 0, f"1 warning, {seen} of 12 images used"


def quietly(scenario, root: Path):
    """An in-process search prints its plan, trials and summary; here only the verdict matters."""
    with contextlib.redirect_stdout(io.StringIO()):
        return scenario(root)


def out_of_memory(root: Path) -> tuple[bool, int, str]:
    table = quietly(rs.out_of_memory_in_one_trial, root)
    ok = list(table["state"]) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"] and "OutOfMemory" in table.loc[1, "reason"]
    return ok, 0, f"states {'/'.join(table['state'])}"


def diverging_loss(root: Path) -> tuple[bool, int, str]:
    table = quietly(rs.diverging_loss_in_one_trial, root)
    ok = list(table["state"]) == ["COMPLETE", "FAIL"] and bool(re.search(r"loss is (?:nan|inf|not finite)", str(table.loc[1, "reason"])))
    return ok, 0, f"states {'/'.join(table['state'])}, reason {table.loc[1, 'reason']!r}"


def interrupt_and_kill(root: Path) -> tuple[bool, int, str]:
    run = rs.interrupt_kill_resume(root)
    complete = int((run.final["state"] == "COMPLETE").sum())
    ok = (run.interrupted_rc == 130 and run.killed_rc == -9 and run.rerun.returncode == 0
          and complete == rs.TINY_POINTS and run.trained_twice() == 0)
    return ok, run.lost(), (f"Ctrl-C exit {run.interrupted_rc}, kill -9 exit {run.killed_rc}, rerun exit "
                            f"{run.rerun.returncode}: {complete}/{rs.TINY_POINTS} complete, "
                            f"{run.trained_twice()} trained twice")


FAULTS = {
    "corrupt image in an image folder": corrupt_image_skipped,
    "out of memory in one trial": out_of_memory,
    "diverging loss (lr 1e30) in one trial": diverging_loss,
    "Ctrl-C, then kill -9, mid-trial; then rerun": interrupt_and_kill,
}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="effscale-reliability-") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        outcomes = rs.run_bad_inputs(rs.make_inputs(scratch / "inputs"))
        clear = 0
        for outcome in outcomes:
            problems = outcome.problems()
            clear += not problems
            line = outcome.lines[-1] if outcome.lines else ""
            print(f"{'ok  ' if not problems else 'FAIL'} {outcome.scenario.name:40s} {outcome.seconds:5.1f} s  "
                  f"{'; '.join(problems) or line[:110]}")
        print(f"bad inputs: {time.perf_counter() - started:.0f} s\n")
        survived = lost = 0
        for name, fault in FAULTS.items():
            started = time.perf_counter()
            folder = scratch / re.sub(r"\W+", "_", name)
            folder.mkdir()
            ok, trials_lost, detail = fault(folder)
            survived += ok
            lost += trials_lost
            print(f"{'ok  ' if ok else 'FAIL'} {name:45s} {time.perf_counter() - started:5.1f} s  {detail}")
    print(f"{len(outcomes)} bad inputs, {clear} clear errors, {survived} faults survived, {lost} trials lost")
    return 0 if clear == len(outcomes) and survived == len(FAULTS) and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
