"""Where a trial's curves go: Lightning CSV logs always, W&B offline runs unless `logger=csv`.

W&B never needs an account here: `WANDB_MODE` defaults to offline, runs land in `<sweep>/wandb/`,
and `wandb sync <sweep>/wandb/offline-run-*` uploads them later if the user wants to.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from effscale.errors import UserError


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it continues a metrics.csv it finds instead of deleting it.
    A trial on several devices fits and tests in separately spawned ranks, each with a fresh writer;
    every trial has a folder of its own, so what is there is the same trial's."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class TrialCSVLogger(CSVLogger):
    """`logs/<trial>/metrics.csv`, one file per trial across the processes that trained and tested it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(log_dir=self.log_dir)
        return self._experiment


_USER_WANDB_CACHE = "WANDB_CACHE_DIR" in os.environ


def run_settings(cfg: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """What a logged run's config records beside its point: the data (sizes, batch, resolution), the
    scale the baseline was taken at and the recipe, so that runs of sweeps with other settings can be
    told apart in W&B. Where the data or the logs live is left out, as settings.json leaves it out."""
    from effscale.results import without_runtime

    return {"data": without_runtime(cfg["data"]), "scale": cfg.get("scale") or {}, "trainer": recipe}


def trial_loggers(kind: str, sweep_dir: Path, run_name: str, *, group: str, job_type: str,
                  config: dict[str, Any], project: str = "effscale") -> list[Logger]:
    """Loggers for one trial: `logs/<run_name>/metrics.csv`, plus a W&B run when `kind` is wandb.
    A folder of that name is an earlier attempt that never recorded its result (a comparison's model is
    trained again under its name after a Ctrl-C): it is removed, not continued."""
    shutil.rmtree(sweep_dir / "logs" / run_name, ignore_errors=True)
    loggers: list[Logger] = [TrialCSVLogger(sweep_dir, name="logs", version=run_name)]
    if kind == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        if not _USER_WANDB_CACHE:  # W&B's own debug logs would go to ~/.cache/wandb: a sweep writes in its folder
            os.environ["WANDB_CACHE_DIR"] = str(sweep_dir / "wandb" / ".cache")
        from lightning.pytorch.loggers import WandbLogger

        try:
            import wandb

            run = wandb.init(project=project, dir=str(sweep_dir), name=run_name, group=group, job_type=job_type,
                             config=config, reinit="finish_previous",
                             # No system-stats sampler thread or console capture: they cost CPU on small machines.
                             settings=wandb.Settings(x_disable_stats=True, console="off", save_code=False,
                                                     disable_git=True))
        except Exception as exc:  # not logged in online, a broken install: the sweep cannot log as asked
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"logger=wandb: W&B could not start a run ({reason}); WANDB_MODE=offline keeps runs "
                            "in the sweep folder, logger=csv leaves W&B out") from None
        loggers.append(WandbLogger(experiment=run))
    elif kind != "csv":
        raise UserError(f"logger.name={kind}: expected wandb or csv")
    return loggers


def _wandb_run(logger: Logger) -> Any:
    return getattr(logger, "experiment", None) if type(logger).__name__ == "WandbLogger" else None


def close_loggers(loggers: list[Logger], summary: dict[str, Any]) -> None:
    """Record a trial's final numbers as the W&B run summary and finish the run. A number the trial
    has not (val_acc None for a FAIL) is taken out of the summary, where Lightning left its last value."""
    for logger in loggers:
        run = _wandb_run(logger)
        if run is not None:
            present = set(run.summary.keys())
            for key in present & {k for k, v in summary.items() if v is None}:
                del run.summary[key]
            run.summary.update({k: v for k, v in summary.items() if v is not None})
            run.finish()
        else:
            logger.finalize("success")


@contextmanager
def closed_if_stopped(loggers: list[Logger]) -> Iterator[None]:
    """A training that stops the command (Ctrl-C, SIGTERM, an error every trial would meet) ends its W&B
    run as failed, state INTERRUPTED, rather than leaving W&B to finish it at exit like a finished one."""
    try:
        yield
    except BaseException:
        for logger in loggers:
            run = _wandb_run(logger)
            try:
                if run is not None:
                    run.summary.update({"state": "INTERRUPTED"})
                    run.finish(exit_code=1)
                else:
                    logger.finalize("failed")
            except Exception:  # the reason the command stops is what matters, not W&B's
                pass
        raise
