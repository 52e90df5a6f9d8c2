import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FASHION_MNIST = Path(os.environ.get("EFFSCALE_FASHION_MNIST", REPO.parent / "shared" / "data" / "fashion-mnist"))

# W&B never needs a network or an account in tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run `effscale ARGS` in a fresh interpreter, as a user would; returns the CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "effscale.cli", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def fashion_mnist_dir() -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST files not found in {FASHION_MNIST} (set EFFSCALE_FASHION_MNIST)")
    return FASHION_MNIST


SERVICES = REPO / "tests" / "services"
POSTGRES_URL = os.environ.get("EFFSCALE_POSTGRES_URL", "postgresql+psycopg://effscale:effscale@127.0.0.1:5432/effscale")


def _require_service(name: str) -> None:
    """Skip when the service is not running here, but fail under CI=true: there a skipped cluster
    test would pass silently. `tests/services/<name>.sh start` brings it up."""
    import subprocess

    status = subprocess.run(["bash", str(SERVICES / f"{name}.sh"), "status"], capture_output=True, text=True)
    if status.returncode == 0:
        return
    reason = f"{name} is not running ({(status.stdout + status.stderr).strip()}); start it with tests/services/{name}.sh start"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def slurm_cluster() -> None:
    """The single-node SLURM cluster of tests/services/slurm.sh."""
    _require_service("slurm")


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL server of tests/services/postgres.sh, as an Optuna storage URL."""
    _require_service("postgres")
    return POSTGRES_URL


# --- waiting on a search running in another process -----------------------------------------------


def study_trials(storage: str, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials()


def wait_for(condition, timeout: float, what: str, proc=None, log: Path | None = None):
    """`condition()` once it is truthy; fails if `proc` (a Popen) ends first or `timeout` passes,
    showing its output (its stdout pipe, or `log`, the file it writes to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            output = log.read_text() if log else proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the search ended (exit {proc.returncode}) before {what}:\n{output}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def running_after_a_complete(storage: str, name: str):
    """The study's trials once one trial is COMPLETE and another is training, else None."""
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).with_name("trials.csv").exists():
        return None  # the worker has not finished creating the study: connecting now would race it
    try:
        trials = study_trials(storage, name)
    except KeyError:  # the study does not exist yet
        return None
    claims = [t for t in trials if "point" in t.user_attrs and t.user_attrs.get("repeat_of") is None]
    states = Counter(t.state.name for t in claims)
    return trials if states["COMPLETE"] >= 1 and states["RUNNING"] >= 1 else None
