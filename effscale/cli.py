"""The `effscale` command: `effscale <command> [hydra overrides…]`.

Each command composes its config (conf/<command>.yaml on top of conf/config.yaml), then calls one
function of the package. Mistakes a user can make raise `UserError`; they are printed as one line
on stderr with exit status 2 (`--debug` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from typing import Callable

from effscale.errors import UserError, output_closed, warning_line

# How PyTorch's OpenMP threads wait between operations: spin a few microseconds, then sleep. OpenMP's
# long default spin is fastest alone but starves the working threads of other processes on the same
# cores (three trainings on 2 cores: steps up to 60x slower); sleeping at once (OMP_WAIT_POLICY=PASSIVE)
# makes a small network's step up to 2x slower alone. benchmarks/wait_policy.py measures all three.
# Set before torch loads its OpenMP runtime; a user's own setting wins.
if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = "3000"

USAGE = """usage: effscale <command> [overrides...] [--debug]
       effscale --version

commands:
  measure     params, MACs, activations, memory, latency of a model (no training)
  search      the alpha/beta/gamma grid search at phi=1 under a budget (trains candidates)
  compare     compound vs width, depth, resolution alone at matched MACs, over phi and seeds (trains)
  report      plots, report.md and report.html from results/<sweep>/trials.csv
  dashboard   optuna-dashboard on a sweep's study (http://127.0.0.1:8080 by default)
  finetune    transfer learning from pretrained weights to a data set (effscale finetune data=imagefolder data.root=DIR)
  predict     top-5 ImageNet classes of photos under pretrained weights (effscale predict IMAGE… --weights …)

Overrides use Hydra's syntax, e.g.
  effscale measure baseline=efficientnet_b0 variant=b3
  effscale measure measure.variants=all format=json
`effscale <command> --help` lists the config groups and the composed config."""


def _measure(overrides: list[str]) -> None:
    from effscale.commands import measure

    measure(overrides)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as a UserError (one line, exit 2) instead of usage + exit."""

    def error(self, message: str):
        raise UserError(message)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return int(text)


def _path(text: str) -> str:
    if not text.strip():  # Path("") is the current folder: never what an empty `--out ""` meant
        raise argparse.ArgumentTypeError("expected a path, got an empty one")
    return text


def _report(args: list[str]) -> None:
    parser = _ArgumentParser(prog="effscale report", description="Plots and a report from a sweep's results table.")
    parser.add_argument("sweep", type=_path, help="the sweep folder, e.g. results/quick (reads its trials.csv)")
    parser.add_argument("--out", type=_path,
                        help="where plots/, report.md and report.html go (default: the sweep folder)")
    parser.add_argument("--metric", default="val_acc", help="accuracy column to report (val_acc or test_acc)")
    opts = parser.parse_args(args)
    from effscale.report import write_report  # after the arguments are known good

    for path in write_report(opts.sweep, opts.out, opts.metric):
        print(path)


def _dashboard(args: list[str]) -> None:
    parser = _ArgumentParser(prog="effscale dashboard", description="optuna-dashboard on a sweep's Optuna study.")
    parser.add_argument("sweep", nargs="?", type=_path,
                        help="the sweep folder, e.g. results/quick (its study.db, journal or storage.txt)")
    parser.add_argument("--storage", type=_path,
                        help="an Optuna storage URL, a SQLite file or a journal file, instead of a sweep folder")
    parser.add_argument("--port", type=_port, default=8080, help="default 8080; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only); 0.0.0.0 exposes it "
                                                            "to the network")
    opts = parser.parse_args(args)
    from effscale.dashboard import run  # after the arguments are known good

    run(opts.sweep, opts.host, opts.port, opts.storage)


def _finetune(overrides: list[str]) -> None:
    from effscale.commands import finetune

    finetune(overrides)


def _predict(args: list[str]) -> None:
    parser = _ArgumentParser(prog="effscale predict", description="Top-k classes of photos under pretrained weights.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    parser.add_argument("--weights", default="imagenet",
                        help="imagenet (torchvision's, for --baseline/--variant), lite0 (the efficientnet-lite0-"
                             "pytorch-model package) or a file: torchvision, efficientnet_pytorch or timm state "
                             "dict, or a checkpoint of effscale finetune (default: imagenet)")
    parser.add_argument("--baseline", help="architecture (conf/baseline/*.yaml); default: the one the weights fit")
    parser.add_argument("--variant", help="official variant b0…b7; default: the one the weights fit")
    parser.add_argument("--top", type=int, default=5, help="how many classes to list (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")
    opts = parser.parse_args(args)
    from effscale.predict import run  # after the arguments are known good

    run(opts.images, opts.weights, opts.baseline, opts.variant, opts.top, opts.json)


def _search(overrides: list[str]) -> None:
    if "-m" in overrides or "--multirun" in overrides:
        from effscale.multirun import multirun

        multirun(overrides)  # one Hydra job per worker: hydra/launcher=submitit_slurm, submitit_local, …
        return
    from effscale.commands import search

    search(overrides)


def _compare(overrides: list[str]) -> None:
    from effscale.commands import compare

    compare(overrides)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "measure": _measure,
    "search": _search,
    "compare": _compare,
    "report": _report,
    "dashboard": _dashboard,
    "predict": _predict,
    "finetune": _finetune,
}
# Commands that take argparse arguments rather than Hydra overrides answer --help themselves.
ARGPARSE_COMMANDS = {"report", "dashboard", "predict"}


# Commands that train: their output closing (`effscale search | head`) stops work left undone.
TRAINING_COMMANDS = {"search", "compare", "finetune"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _main(argv)
        sys.stdout.flush()  # a pipe is block-buffered: write what is left here, not at exit
        return status
    except BrokenPipeError:  # `effscale measure format=csv | head`: the reader has all it wanted
        command = _output_lost(argv)
        if command not in TRAINING_COMMANDS or "--help" in argv or "-h" in argv:
            return 0
        output_closed(f"effscale {command}", resumes=command != "finetune")
        return 1
    except OSError as exc:  # `effscale search > log` on a full disk or quota: no traceback for that
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or exc.filename is not None:
            raise
        command = _output_lost(argv)
        print(f"effscale{' ' if command else ''}{command}: stopped: {exc.strerror}", file=sys.stderr)
        return 1


def _output_lost(argv: list[str]) -> str:
    """Point stdout at nothing once it can take no more (Python would try again, and complain, as it
    flushes at exit); the command that was writing, or "" when none was named."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return next((a for a in argv if not a.startswith("-")), "")


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv:  # a command is missing: a usage error
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from effscale import __version__

        print(f"effscale {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"effscale: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    saved = warnings.showwarning
    if not debug:  # showwarning, not formatwarning: importing Lightning replaces formatwarning with its own
        warnings.showwarning = warning_line(command)
    if command not in ARGPARSE_COMMANDS:
        from effscale.config import name_as_typed

        rest = name_as_typed(rest)
    try:
        if ("-h" in rest or "--help" in rest) and command not in ARGPARSE_COMMANDS:
            from effscale.commands import print_help

            print_help(command, [a for a in rest if a not in ("-h", "--help", "-m", "--multirun")])
            return 0
        COMMANDS[command](rest)
    except UserError as exc:
        if debug:
            raise
        print(f"effscale {command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"effscale {command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
