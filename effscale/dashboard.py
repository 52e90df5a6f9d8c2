"""`effscale dashboard results/<sweep>`: optuna-dashboard on the sweep's Optuna study.

The storage is found in the sweep folder, in this order: `study.db` (SQLite, the search's default),
a journal file (`*.journal`, `journal.log`: several workers on one shared file system), or the
`search.storage` URL the search wrote to `storage.txt` (a journal file elsewhere, or PostgreSQL on a
cluster); `--storage URL` names one directly. optuna-dashboard's WSGI app is
served from this process by wsgiref, bound to 127.0.0.1 unless `--host` says otherwise: the
dashboard can edit notes and tell trials, so it is not exposed to the network by default.
"""

from __future__ import annotations

import socket
import socketserver
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from effscale.errors import UserError
from effscale.storages import server_options, without_password

SQLITE_FILE = "study.db"
JOURNAL_FILES = ("*.journal", "journal.log")
URL_FILE = "storage.txt"


def find_storage(folder: str | Path) -> str:
    """The Optuna storage of a sweep folder, as a URL or journal-file path optuna-dashboard accepts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such sweep folder")
    if (folder / SQLITE_FILE).is_file():
        return f"sqlite:///{(folder / SQLITE_FILE).resolve()}"
    for pattern in JOURNAL_FILES:
        journals = sorted(folder.glob(pattern))
        if journals:
            return str(journals[0].resolve())
    if (folder / URL_FILE).is_file():
        url = (folder / URL_FILE).read_text().strip()
        if url:
            return dashboard_url(url)
    raise UserError(f"{folder}: no Optuna study here (looked for {SQLITE_FILE}, a journal file, {URL_FILE}); "
                    "run `effscale search` first")


def dashboard_url(url: str) -> str:
    """A `search.storage` value or `--storage` as optuna-dashboard takes it: `journal:///path/file.log`
    is the journal file's path, and so is a plain path, unless it is a SQLite file (`study.db`); RDB URLs
    pass unchanged."""
    if url.startswith("journal://"):
        return url[len("journal://"):]
    if "://" not in url and _is_sqlite(Path(url)):
        return f"sqlite:///{Path(url).resolve()}"
    return url


def _journal_or_empty(path: Path) -> bool:
    """Whether the file is empty or its first line is a record of Optuna's journal (JSON with an op_code)."""
    import json

    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    if not first.strip():
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """The browser fetches several API routes at once; answer them in parallel."""

    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    """The same on an IPv6 address (--host ::1): WSGIServer's socket is IPv4's."""

    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        pass


def read_storage(storage: str) -> Any:
    """`storage` (an RDB URL or a journal file's path, as `find_storage` gives it) opened and read once,
    so that one that is missing, unreachable or not Optuna's is a UserError before any server starts.
    Nothing is created: SQLite would make a missing file an empty database and serve that."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy.engine import make_url

    what, engine = storage, {}
    if "://" not in storage:
        if not Path(storage).is_file():
            raise UserError(f"storage {storage}: no such file")
        if not _journal_or_empty(Path(storage)):  # Optuna's reader skips lines it cannot parse: it would serve none
            raise UserError(f"storage {storage}: not an Optuna journal file (its first line is no journal record)")
    elif storage.startswith("sqlite:"):
        path = make_url(storage).database
        if not path or not Path(path).is_file():
            raise UserError(f"storage {storage}: no such SQLite file")
    else:
        what, engine = without_password(storage), server_options(storage)
    try:
        if "://" not in storage:
            opened = JournalStorage(JournalFileBackend(storage))
        else:
            opened = RDBStorage(storage, skip_table_creation=True, **engine)
        studies = opened.get_all_studies()
        if studies:  # and the trials of one: a database without their tables lists studies, then fails each page
            opened.get_all_trials(studies[0]._study_id, deepcopy=False)  # (the tables are every study's)
    except Exception as exc:  # the storage is the user's: a bad one is their mistake to fix
        cause = exc.__cause__ or exc  # optuna's StorageInternalError wraps SQLAlchemy's, which wraps the driver's
        reason = str(getattr(cause, "orig", None) or cause).strip().partition("\n")[0] or type(cause).__name__
        reason = reason.replace(storage, what)  # SQLAlchemy quotes a URL it cannot parse, password and all
        raise UserError(f"storage {what}: not a readable Optuna storage ({reason})") from None
    return opened


def serve(storage: str, host: str = "127.0.0.1", port: int = 8080, quiet: bool = False) -> WSGIServer:
    """A started-but-not-serving HTTP server for optuna-dashboard on `storage`; call `serve_forever()`
    (in a thread, for tests) and `shutdown()`. Port 0 picks a free port (`server.server_port`)."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(read_storage(storage))
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    try:
        return make_server(host, port, app, server_class=server_class,
                           handler_class=_QuietHandler if quiet else WSGIRequestHandler)
    except OSError as exc:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def run(folder: str | Path | None, host: str = "127.0.0.1", port: int = 8080, storage: str | None = None) -> None:
    """Serve the sweep's study (or the `storage` URL given) until Ctrl-C."""
    if folder is None and storage is None:
        raise UserError("name a sweep folder (results/<sweep>) or --storage URL")
    if folder is not None and storage is not None:  # the folder's own study would be silently passed over
        raise UserError(f"{folder} and --storage {without_password(storage)}: name the study once, by its sweep "
                        "folder or by --storage")
    server = serve(dashboard_url(storage) if storage else find_storage(folder), host, port)
    address, port = server.server_address[:2]  # as bound: port 0 has become a free port
    url = f"http://{f'[{address}]' if ':' in address else address}:{port}/dashboard"  # an IPv6 address in []
    print(f"optuna-dashboard for {without_password(storage) if storage else folder}: {url}  (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
