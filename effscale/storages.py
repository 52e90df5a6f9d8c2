"""Where a sweep's Optuna study lives: a SQLite file in the sweep folder, a journal file, or a database
server, and its URL fit to print. Light to import (no torch), for the dashboard as for the search."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CONNECT_TIMEOUT_S = 10  # seconds a database server may take to answer a new connection


def open_storage(url: str | None, sweep_dir: Path) -> Any:
    """`None`: SQLite file `study.db` in the sweep folder. `journal:///path/file.log`: Optuna's
    JournalStorage on one file (workers on a shared file system). Anything else: an RDB URL."""
    if not url:
        return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    path = journal_file(url)
    if path is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(("postgresql", "mysql")):
        from optuna.storages import RDBStorage

        return RDBStorage(url, **server_options(url))
    return url


def journal_file(url: str | None) -> Path | None:
    """The file of a `journal:///path/file.log` storage (`~` is the home folder); None for any other."""
    return Path(url[len("journal://"):]).expanduser() if url and url.startswith("journal://") else None


def storage_file(url: str | None) -> Path | None:
    """The file a `journal://` or `sqlite:///` storage keeps its study in; None for a database server,
    and for no URL (the sweep folder's study.db)."""
    path = journal_file(url)
    if path is not None or not url or not url.startswith("sqlite:///"):
        return path
    name = url[len("sqlite:///"):].split("?")[0]
    return Path(name) if name and name != ":memory:" else None


def absolute(url: str) -> str:
    """`url` with a relative journal or SQLite file made absolute, so that it names the same file from
    any folder (`effscale dashboard` reads it from the sweep folder's storage.txt)."""
    path = journal_file(url)
    if path is not None:
        return f"journal://{path.resolve()}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{Path(url[len('sqlite:///'):]).resolve()}"
    return url


def server_options(url: str) -> dict[str, Any]:
    """RDBStorage's options for `url`: on a database server, a connection that does not answer fails
    after CONNECT_TIMEOUT_S, not the driver's default of minutes."""
    if url.startswith(("postgresql", "mysql")):
        return {"engine_kwargs": {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}}
    return {}


def without_password(url: str, masked: bool = True) -> str:
    """An RDB URL fit to print (`postgresql://user:***@host/db`) or, with `masked=False`, to write
    down (`postgresql://user@host/db`). Journal and SQLite URLs come back as they are. The password
    runs from the user's ":" to the first "@", or on to the last "@" before the "/" or "?" after it:
    URL readers differ on a password with "@" in it, so all that any of them could take is hidden.
    A `password=` in the query string is masked or dropped alike."""
    if "://" not in url or url.startswith(("journal:", "sqlite:")):
        return url
    scheme, _, rest = url.partition("://")
    rest = re.sub(r"([?&])password=[^&]*&?", r"\1password=***&" if masked else r"\1", rest).rstrip("?&")
    first_at = rest.find("@")
    if first_at < 0 or ":" not in rest[:first_at]:
        return f"{scheme}://{rest}"
    after = [i for i in (rest.find("/", first_at), rest.find("?", first_at)) if i >= 0]
    at = rest.rfind("@", 0, min(after, default=len(rest)))
    user = rest[:first_at].partition(":")[0]
    return f"{scheme}://{user}{':***' if masked else ''}@{rest[at + 1:]}"
