"""How a mistake the user can fix, and a warning, reach the terminal: one line each."""

import sys
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix (bad override, missing file, impossible budget): one line, exit status 2."""

    def __init__(self, message: str = "") -> None:
        # A DataLoader worker's exception comes back as type("Caught … Original Traceback …"): keep its
        # last line, which is ours.
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def warning_line(command: str) -> Callable[..., None]:
    """A `warnings.showwarning` that prints Python's warnings (effscale's, Hydra's, Lightning's) as one
    line each, like the errors, not two lines naming the library's source file."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
        print(f"effscale {command}: warning: {text or category.__name__}", file=file or sys.stderr)

    return show


def output_closed(who: str, resumes: bool = True) -> None:
    """Say on stderr, when it is still open, that a training command stopped because its standard
    output closed: a pipe's reader ended (`| head`, a `tee` that died)."""
    after = ("what finished is kept, and the same command goes on from there" if resumes
             else "nothing was saved")
    try:
        print(f"{who}: stopped, its output closed (the program reading it ended); {after}", file=sys.stderr)
    except OSError:
        pass
