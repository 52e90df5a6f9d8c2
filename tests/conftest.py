import os
import sys
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
