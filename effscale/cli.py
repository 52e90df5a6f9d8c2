"""The `effscale` command: `effscale <command> [hydra overrides…]`.

Each command composes its config (conf/<command>.yaml on top of conf/config.yaml), then calls one
function of the package. Mistakes a user can make raise `UserError`; they are printed as one line
on stderr with exit status 2 (`--debug` shows the traceback instead).
"""

from __future__ import annotations

import sys
from typing import Callable

from effscale.errors import UserError

USAGE = """usage: effscale <command> [overrides...] [--debug]

commands:
  measure     params, MACs, activations, memory, latency of a model (no training)

Overrides use Hydra's syntax, e.g.
  effscale measure baseline=efficientnet_b0 variant=b3
  effscale measure measure.variants=all format=json
`effscale <command> --help` lists the config groups and the composed config."""


def _measure(overrides: list[str]) -> None:
    from effscale.commands import measure

    measure(overrides)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "measure": _measure,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"effscale: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        if "-h" in rest or "--help" in rest:
            from effscale.commands import print_help

            print_help(command, [a for a in rest if a not in ("-h", "--help")])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
