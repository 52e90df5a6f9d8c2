"""The reliability scenarios of effscale, shared by tests/test_reliability.py and benchmarks/reliability.py.

Two kinds:

- bad inputs (`BAD_INPUTS`): a command line a user might type with something wrong in it. The contract
  (README) is one line on stderr naming the key or file, exit status 2, no traceback, and nothing
  written to the output folder.
- faults (`TINY_SEARCH` and the helpers below): things that go wrong inside a running search (a
  diverging loss, an out-of-memory, Ctrl-C, a killed process). The sweep must go on or resume, and no
  finished trial may be lost or trained twice.

Every file a scenario needs is made by `make_inputs` under a scratch folder: tiny image folders,
Fashion-MNIST IDX files with a wrong magic number or cut short, checkpoints that are not state dicts.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent

# A search that trains in seconds: a one-stage network on 16 px procedural images, one epoch,
# grid points that differ in depth only (gamma fixed at 1, so alpha alone meets alpha·beta²·gamma² ≈ 2).
# Twenty repeats give each alpha its own depth, ⌈20·α⌉ = 37 … 40 blocks (with one, every alpha > 1
# rounds to two blocks: one network, which a search trains once).
TINY_NETWORK = [
    "baseline.stages=[{block:mbconv,expand:1,kernel:3,stride:2,channels:8,repeats:20,se:0.25}]",
    "baseline.stem.channels=8", "baseline.head.channels=32",
]
TINY_RUN = TINY_NETWORK + [
    "data.batch_size=32", "data.resolution=16", "trainer.max_epochs=1", "trainer.threads=1",
    "search.extra_seeds=0", "budget.macs_tolerance=10", "search.grid.alpha=[1.85,2.0]", "search.grid.beta=[1.0,1.0]",
    "search.grid.gamma_values=[1.0]", "search.grid.step=0.05", "search.grid.tolerance=0.1", "logger=csv",
]
TINY_SEARCH = TINY_RUN + ["data.train_size=64", "data.val_size=32", "data.test_size=32"]
TINY_POINTS = 4  # alpha = 1.85, 1.9, 1.95, 2.0

# Lightning's and Python's warnings are not errors; the contract is about what effscale itself prints.
QUIET_ENV = {"PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def cli(*args: str, env: dict | None = None, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`effscale ARGS` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "effscale.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **QUIET_ENV, **(env or {})}, **popen)


# --- the files the scenarios read -----------------------------------------------------------------------


def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), colour).save(path)


def image_folder(root: Path, per_class: int = 6, corrupt: int = 0) -> Path:
    """root/<class>/<n>.png for two classes; `corrupt` of them replaced by a PNG cut in half."""
    for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        for i in range(per_class):
            _png(root / label / f"{i}.png", colour)
    for i in range(corrupt):
        path = root / "red" / f"{i}.png"
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return root


def _idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in shape)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def fashion_mnist(root: Path, images: int = 8, fault: str | None = None) -> Path:
    """The four Fashion-MNIST IDX files, `images` 28×28 images each. `fault`: "magic" (the training images
    carry the label files' magic number) or "truncated" (their header promises ten times what follows)."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        declared = images * 10 if fault == "truncated" and prefix == "train" else images
        magic = 2049 if fault == "magic" and prefix == "train" else 2051
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", magic, (declared, 28, 28), bytes(images * 28 * 28))
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", 2049, (images,), bytes(i % 10 for i in range(images)))
    return root


class RunsCode:
    """Unpickling this creates a marker file: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def checkpoints(root: Path) -> dict[str, Path]:
    """Weights files that must be refused: not a state dict, cut short, pickled code, the wrong shapes."""
    import torch
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    files = {name: root / f"{name}.pt" for name in ("not_state_dict", "truncated", "pickled_code", "mismatch")}
    torch.save([1, 2, 3], files["not_state_dict"])
    state = torchvision.models.efficientnet_b0().state_dict()
    torch.save(state, root / "whole.pt")
    whole = (root / "whole.pt").read_bytes()
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    (root / "whole.pt").unlink()
    torch.save({"state_dict": RunsCode(root / "code_ran")}, files["pickled_code"])
    key = "features.1.0.block.0.0.weight"
    state[key] = torch.zeros(state[key].shape[0] + 8, *state[key].shape[1:])
    torch.save(state, files["mismatch"])
    return files


def make_inputs(root: Path) -> dict[str, Path]:
    """Every file or folder a bad-input scenario names, keyed as the `{…}` fields of `BAD_INPUTS`."""
    paths = {"out": root / "out", "empty": root / "empty", "no_images": root / "no_images",
             "not_image": root / "notes.jpg", "a_file": root / "a_file",
             "fmnist_magic": fashion_mnist(root / "fmnist_magic", fault="magic"),
             "fmnist_truncated": fashion_mnist(root / "fmnist_truncated", fault="truncated"),
             "all_corrupt": image_folder(root / "all_corrupt", per_class=2, corrupt=2)}
    paths["out"].mkdir(parents=True)
    _png(root / "photo.png")
    paths["photo"] = root / "photo.png"
    paths["empty"].mkdir()
    (paths["no_images"] / "cats").mkdir(parents=True)
    (paths["no_images"] / "dogs").mkdir()
    (paths["no_images"] / "cats" / "readme.txt").write_text("no pictures here\n")
    paths["not_image"].write_text("this is not a JPEG\n")
    paths["a_file"].write_text("a file where the output folder should be\n")
    # every image of the second class is corrupt too: the held-out split has nothing readable left
    for i in range(2):
        p = paths["all_corrupt"] / "blue" / f"{i}.png"
        p.write_bytes(p.read_bytes()[:20])
    paths.update(checkpoints(root / "weights"))
    return paths


# --- bad inputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    """`effscale ARGS` (with `{name}` fields filled from `make_inputs`) must fail with one line holding `needle`."""

    name: str
    args: tuple[str, ...]
    needle: str

    def argv(self, paths: dict[str, Path]) -> list[str]:
        argv = list(self.args)
        for key, path in paths.items():  # not str.format: Hydra overrides have braces of their own
            argv = [a.replace("{" + key + "}", str(path)) for a in argv]
        return argv


def _search(*args: str) -> tuple[str, ...]:
    return ("search", *TINY_SEARCH, "out={out}", "name=sweep", *args)


def _search_on(*data: str) -> tuple[str, ...]:
    """The tiny search on another data source (the procedural source's sizes do not apply to it)."""
    return ("search", *TINY_RUN, "out={out}", "name=sweep", *data)


BAD_INPUTS = [
    BadInput("unknown baseline", _search("baseline=nope"), "baseline=nope"),
    BadInput("unknown data source", _search("data=nope"), "data=nope"),
    BadInput("unknown key", _search("trainer.max_epoch=1"), "trainer.max_epoch"),
    BadInput("learning rate not a number", _search("trainer.lr=abc"), "trainer.lr"),
    BadInput("budget not a number", _search("budget.max_params=abc"), "budget.max_params"),
    BadInput("unknown optimizer", ("compare", *TINY_SEARCH, "out={out}", "name=sweep", "trainer.optimizer=adam"),
             "trainer.optimizer"),
    BadInput("fine-tuning momentum above 1", ("finetune", "out={out}", "finetune.recipe.momentum=1.5"),
             "finetune.recipe.momentum"),
    BadInput("negative phi", ("measure", "scale.phi=-1"), "scale.phi"),
    BadInput("non-numeric phi", ("measure", "scale.phi=abc"), "scale.phi"),
    BadInput("negative search phi", _search("search.phi=-1"), "phi"),
    BadInput("alpha below 1", ("measure", "scale.phi=1", "scale.alpha=0.9"), "scale.alpha"),
    BadInput("beta below 1", ("measure", "scale.phi=1", "scale.beta=0.5"), "scale.beta"),
    BadInput("gamma below 1", ("measure", "scale.phi=1", "scale.gamma=0.99"), "scale.gamma"),
    BadInput("grid alpha below 1", _search("search.grid.alpha=[0.5,1.0]"), "alpha"),
    BadInput("grid misses alpha·beta²·gamma² ≈ 2", _search("search.grid.alpha=[1.0,1.1]"), "search.grid"),
    BadInput("budget tighter than the baseline", _search("budget.max_params=1000"), "budget.max_params"),
    BadInput("data.root missing", _search_on("data=imagefolder", "data.root={out}/nowhere"), "data.root"),
    BadInput("data.root empty", _search_on("data=imagefolder", "data.root={empty}"), "empty"),
    BadInput("data.root with no images", _search_on("data=imagefolder", "data.root={no_images}"), "no_images"),
    BadInput("image folder with nothing readable", _search_on("data=imagefolder", "data.root={all_corrupt}",
                                                           "data.resolution=16"), "all_corrupt"),
    BadInput("Fashion-MNIST wrong magic", _search_on("data=fashion_mnist", "data.root={fmnist_magic}"),
             "magic"),
    BadInput("Fashion-MNIST truncated", _search_on("data=fashion_mnist", "data.root={fmnist_truncated}"),
             "truncated"),
    BadInput("checkpoint not a state dict", ("predict", "{photo}", "--weights", "{not_state_dict}"),
             "not_state_dict.pt"),
    BadInput("checkpoint truncated", ("predict", "{photo}", "--weights", "{truncated}"), "truncated.pt"),
    BadInput("checkpoint with pickled code", ("predict", "{photo}", "--weights", "{pickled_code}"),
             "pickled_code.pt"),
    BadInput("weights that do not fit", ("predict", "{photo}", "--weights", "{mismatch}"),
             "features.1.0.block.0.0.weight"),
    BadInput("unreachable storage", _search("search.storage=postgresql+psycopg://u:p@127.0.0.1:1/db"),
             "search.storage"),
    BadInput("output under /proc", ("search", *TINY_SEARCH, "out=/proc/effscale", "name=sweep"), "/proc/effscale"),
    BadInput("output is a file", ("search", *TINY_SEARCH, "out={a_file}", "name=sweep"), "a_file"),
    BadInput("compare: output is a file", ("compare", *TINY_SEARCH, "out={a_file}", "name=sweep"), "a_file"),
    BadInput("a section given as text", _search("search.grid=abc"), "search.grid"),
    BadInput("predict: no such image", ("predict", "{out}/missing.jpg", "--weights", "{mismatch}"), "missing.jpg"),
    BadInput("predict: not an image", ("predict", "{not_image}"), "notes.jpg"),
    BadInput("report: no results table", ("report", "{empty}"), "empty"),
    BadInput("report: --out is a file", ("report", str(REPO / "results" / "quick"), "--out", "{a_file}"), "a_file"),
    BadInput("dashboard: port out of range", ("dashboard", str(REPO / "results" / "quick"), "--port", "70000"),
             "--port"),
]


@dataclass
class Outcome:
    scenario: BadInput
    returncode: int
    stderr: str
    stdout: str
    written: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def problems(self) -> list[str]:
        """What breaks the contract, in words; empty when the error was one clear line."""
        found = []
        if self.returncode != 2:
            found.append(f"exit status {self.returncode}, expected 2")
        if "Traceback" in self.stderr:
            found.append("a traceback")
        if len(self.lines) != 1:
            found.append(f"{len(self.lines)} stderr lines, expected 1")
        if self.scenario.needle not in self.stderr:
            found.append(f"stderr does not name {self.scenario.needle!r}")
        if self.written:
            found.append(f"wrote {', '.join(self.written)}")
        return found


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def run_bad_input(scenario: BadInput, paths: dict[str, Path]) -> Outcome:
    """Run one scenario; `written` lists what it left in the output folder (which must stay empty)."""
    # its own folder, so that scenarios may run side by side (ASCII: Hydra's override grammar is)
    out = paths["out"] / re.sub(r"[^A-Za-z0-9]+", "_", scenario.name)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = cli(*scenario.argv({**paths, "out": out}), timeout=240)
    written = sorted(_files(out))
    return Outcome(scenario, done.returncode, done.stderr, done.stdout, written, time.perf_counter() - started)


def run_bad_inputs(paths: dict[str, Path], scenarios: list[BadInput] = BAD_INPUTS, workers: int = 3) -> list[Outcome]:
    """Every scenario, a few at a time (each is a fresh interpreter that mostly waits on imports)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda s: run_bad_input(s, paths), scenarios))


# --- faults inside a search -----------------------------------------------------------------------------


def trials(sweep: Path) -> pd.DataFrame:
    path = sweep / "trials.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["trial", "state", "point"])


def search_until(out: Path, name: str, complete: int, sig: int, extra: tuple[str, ...] = (),
                 timeout: float = 240) -> tuple[int, str, pd.DataFrame]:
    """Start the tiny search, wait until `complete` trials are COMPLETE and the next one is RUNNING in the
    sweep's study, then send `sig`. Returns the exit status, stderr and the table as the run left it."""
    sweep = out / name
    process = subprocess.Popen([sys.executable, "-m", "effscale.cli", "search", *TINY_SEARCH, f"out={out}",
                                f"name={name}", *extra], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **QUIET_ENV},
                               preexec_fn=hear_ctrl_c)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            states = trial_states(sweep / "study.db")
            if states.count("COMPLETE") >= complete and "RUNNING" in states:
                time.sleep(0.2)  # into the running trial's training
                process.send_signal(sig)
                break
            time.sleep(0.1)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr, trials(sweep)


def hear_ctrl_c() -> None:
    """In the child, before it starts: Ctrl-C's default action, as in a terminal. A shell that starts a
    command in the background (`make test &`, some CI runners) has it ignored, and the child's Python
    would then never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ignore_ctrl_c() -> None:
    """In the child, before it starts: Ctrl-C ignored, as a shell leaves it for a command it starts
    in the background."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def trial_states(db: Path) -> list[str]:
    """The state of every trial in a study file, read with plain SQL so that polling stays cheap."""
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as connection:
            return [state for (state,) in connection.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # the schema is still being created
        return []


def study_trials(sweep: Path) -> list:
    """The Optuna study's trials (the record of what ran), read from the sweep's SQLite file."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{sweep / 'study.db'}"
    name = optuna.get_all_study_names(storage)[0]
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def secrets_in(folder: Path, secret: str) -> list[str]:
    """Every file under `folder` whose bytes contain `secret`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and secret.encode() in p.read_bytes())


INTERRUPT = signal.SIGINT
KILL = signal.SIGKILL


# --- faults, as functions both the tests and the benchmark run ------------------------------------------

OOM_DEPTH = 1.9  # the grid point whose trial runs out of memory, or diverges


def search_in_process(out: Path, *extra: str, fit=None) -> pd.DataFrame:
    """The tiny search in this process, `fit` standing in for `effscale.train.fit_candidate`; the
    results table sorted by alpha."""
    from effscale import train
    from effscale.commands import search

    real = train.fit_candidate
    train.fit_candidate = fit or real
    try:
        search([*TINY_SEARCH, f"out={out}", "name=sweep", *extra])
    finally:
        train.fit_candidate = real
    return pd.read_csv(out / "sweep" / "trials.csv").sort_values("alpha").reset_index(drop=True)


def out_of_memory_in_one_trial(out: Path) -> pd.DataFrame:
    """The candidate at depth 1.9 raises torch.OutOfMemoryError; the others 'train' instantly."""
    import torch

    def fit(table, data, recipe, **kwargs):
        if abs(table["depth_mult"] - OOM_DEPTH) < 1e-9:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"state": "COMPLETE", "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "train_seconds": 0.1,
                "val_history": [0.5], "reason": None}

    return search_in_process(out, fit=fit)


def diverging_loss_in_one_trial(out: Path) -> pd.DataFrame:
    """Two candidates trained for real; the one at depth 1.9 with a learning rate of 1e30 (loss inf, then nan)."""
    from effscale import train

    real = train.fit_candidate

    def fit(table, data, recipe, **kwargs):
        if abs(table["depth_mult"] - OOM_DEPTH) < 1e-9:
            recipe = {**recipe, "lr": 1e30}
        return real(table, data, recipe, **kwargs)

    return search_in_process(out, "search.grid.alpha=[1.85,1.9]", fit=fit)


@dataclass
class Resumed:
    """What three launches of one sweep left: Ctrl-C after one trial, kill -9 after another, then a full run."""

    interrupted_rc: int
    interrupted_stderr: str
    after_interrupt: pd.DataFrame
    killed_rc: int
    after_kill: pd.DataFrame
    rerun: subprocess.CompletedProcess
    final: pd.DataFrame
    study: list

    def lost(self) -> int:
        """Trials complete before a fault that are not the same complete trial at the end."""
        final = self.final.set_index("point")
        lost = 0
        for table in (self.after_interrupt, self.after_kill):
            for _, row in table[table["state"] == "COMPLETE"].iterrows():
                if row["point"] not in final.index or final.loc[row["point"], "trial"] != row["trial"]:
                    lost += 1
        return lost

    def trained_twice(self) -> int:
        points = [t.user_attrs.get("point") for t in self.study if t.state.name == "COMPLETE"]
        return len(points) - len(set(points))


# Trials long enough (about a second here) to be caught in the middle by a signal.
CATCHABLE = ("data.train_size=512", "trainer.max_epochs=2")


def interrupt_kill_resume(out: Path) -> Resumed:
    rc1, err1, t1 = search_until(out, "sweep", complete=1, sig=INTERRUPT, extra=CATCHABLE)
    done = int((t1["state"] == "COMPLETE").sum())
    rc2, _, t2 = search_until(out, "sweep", complete=done + 1, sig=KILL, extra=CATCHABLE)
    rerun = cli("search", *TINY_SEARCH, *CATCHABLE, f"out={out}", "name=sweep")
    return Resumed(rc1, err1, t1, rc2, t2, rerun, trials(out / "sweep"), study_trials(out / "sweep"))
