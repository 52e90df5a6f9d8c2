"""Where a trial's curves go: Lightning CSV logs always, W&B offline runs unless `logger=csv`.

W&B never needs an account here: `WANDB_MODE` defaults to offline, runs land in `<sweep>/wandb/`,
and `wandb sync <sweep>/wandb/offline-run-*` uploads them later if the user wants to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger

from effscale.errors import UserError


def trial_loggers(kind: str, sweep_dir: Path, run_name: str, *, group: str, job_type: str,
                  config: dict[str, Any], project: str = "effscale") -> list[Logger]:
    """Loggers for one trial: `logs/<run_name>/metrics.csv`, plus a W&B run when `kind` is wandb."""
    loggers: list[Logger] = [CSVLogger(sweep_dir, name="logs", version=run_name)]
    if kind == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        run = wandb.init(project=project, dir=str(sweep_dir), name=run_name, group=group, job_type=job_type,
                         config=config, reinit="finish_previous",
                         # No system-stats sampler thread or console capture: they cost CPU on small machines.
                         settings=wandb.Settings(x_disable_stats=True, console="off", save_code=False,
                                                 disable_git=True))
        loggers.append(WandbLogger(experiment=run))
    elif kind != "csv":
        raise UserError(f"logger.name={kind}: expected wandb or csv")
    return loggers


def close_loggers(loggers: list[Logger], summary: dict[str, Any]) -> None:
    """Record a trial's final numbers as the W&B run summary and finish the run."""
    for logger in loggers:
        run = getattr(logger, "experiment", None) if type(logger).__name__ == "WandbLogger" else None
        if run is not None:
            run.summary.update({k: v for k, v in summary.items() if v is not None})
            run.finish()
        else:
            logger.finalize("success")
