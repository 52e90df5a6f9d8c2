"""Files that a reader never sees half-written: the results table, settings.json, the report, a checkpoint;
and the log file of a sweep.

Each is written to a temporary file in its own folder and renamed over the final name (`os.replace` is
atomic on POSIX), so a crash, a full disk or Ctrl-C leaves the old file or the new one, never half of one,
and no temporary file behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from effscale.errors import UserError


def write_atomically(path: str | Path, write: Callable[[IO[Any]], None], binary: bool = False) -> Path:
    """Call `write` with an open temporary file beside `path` (text, or bytes with `binary`), then
    rename it to `path`. The file gets the mode any other new file of the user's would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="", encoding="utf-8")) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_mode() -> int:
    """The mode open() would give a new file, 0o666 less the umask: mkstemp's files are 0o600, and the
    renamed file should be as readable as any other the user writes."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def log_to(log: logging.Logger, path: Path) -> None:
    """Send `log` to `path` (a sweep's search.log or compare.log), and no longer to the file it went
    to before: a process that opens a second sweep (the jobs of `search -m` with the basic launcher,
    one after another) writes each line once, to the sweep it works on. The file is created with its
    first line: what goes there is a failure's traceback or a storage warning, so a run without
    trouble leaves none."""
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(old)
        old.close()
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def unused_path(path: Path) -> Path:
    """`path`, or where a file is there already, the first free `<stem>-v1<suffix>`, `-v2`, … beside it
    (as Lightning's ModelCheckpoint names a checkpoint that would overwrite another)."""
    version = 0
    free = path
    while free.exists():
        version += 1
        free = path.with_name(f"{path.stem}-v{version}{path.suffix}")
    return free


def first_new_folder(path: Path) -> Path | None:
    """The outermost folder that creating `path` would create (None if it exists): what to remove
    again so that a refused run leaves nothing behind."""
    return next((p for p in reversed([path, *path.parents]) if not p.exists()), None)


def make_sweep_folder(sweep_dir: Path, out: Any) -> Path | None:
    """Create a sweep folder and return the first folder that made (`first_new_folder`): None when it
    was there, or another command started at the same moment made it first, so that only the run
    that made it removes it. A folder that cannot be made, or one there already that cannot be written
    in, is one error naming `out`."""
    new = first_new_folder(sweep_dir)
    try:
        sweep_dir.parent.mkdir(parents=True, exist_ok=True)
        sweep_dir.mkdir()
    except OSError as exc:
        if not (isinstance(exc, FileExistsError) and sweep_dir.is_dir()):
            raise UserError(f"out={out}: cannot create the sweep folder {sweep_dir} ({exc.strerror or exc})") from None
        try:
            probe_write(sweep_dir)
        except OSError as exc:
            raise UserError(f"out={out}: cannot write in the sweep folder {sweep_dir} ({exc.strerror or exc})") from None
        return None
    return new


def remove_created(new: Path | None, own: Path) -> None:
    """Undo the folders a refused or interrupted run created: `own`, the run's own folder, with all in
    it, and then each folder above it up to `new` (its `first_new_folder`) while that is empty. A
    folder such as results/ that another command wrote into meanwhile stays, with what it holds."""
    if new is None or not (own == new or new in own.parents):
        return  # `own` was there before the run
    shutil.rmtree(own, ignore_errors=True)
    folder = own
    while folder != new:
        folder = folder.parent
        try:
            folder.rmdir()
        except OSError:  # not empty: someone else's files are in it
            return


def probe_write(folder: Path) -> None:
    """Make a file in `folder` and remove it again; OSError if this user cannot write there."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def writable_folder(folder: Path) -> Path | None:
    """Create `folder` if need be and check that a file can be written in it (one is made and removed
    again); OSError if not. Returns the outermost folder this created (None if it existed), for the
    caller to pass to `remove_created` should it end up writing nothing there."""
    new = first_new_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_write(folder)
    except OSError:
        remove_created(new, folder)
        raise
    return new


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """The block run by one process (or thread) at a time among those that hold `path` this way: an
    flock on it (created empty if missing), released when the block ends or its process dies."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
