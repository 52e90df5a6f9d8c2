"""`effscale dashboard`: optuna-dashboard's JSON API answers over 127.0.0.1 for a sweep's study."""

import contextlib
import json
import os
import socket
import threading
import urllib.request

import optuna
import pytest

from conftest import run_cli
from effscale.dashboard import find_storage, serve
from effscale.errors import UserError


@pytest.fixture
def sweep(tmp_path):
    """A sweep folder whose study.db holds a study 'quick' with five finished trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="quick", storage=f"sqlite:///{tmp_path / 'study.db'}",
                                direction="maximize")
    study.optimize(lambda t: t.suggest_float("alpha", 1.0, 2.0), n_trials=5)
    return tmp_path


@contextlib.contextmanager
def serving(storage):
    """optuna-dashboard on a free port of 127.0.0.1, in a thread, for the duration of the block."""
    server = serve(storage, "127.0.0.1", port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def get_json(port, route):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=10) as answer:
        return json.loads(answer.read())


def test_dashboard_api_lists_the_study_and_its_trials(sweep):
    with serving(find_storage(sweep)) as server:
        assert server.server_address[0] == "127.0.0.1"
        studies = get_json(server.server_port, "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["quick"]
        detail = get_json(server.server_port, f"/api/studies/{studies[0]['study_id']}")
        assert detail["name"] == "quick" and len(detail["trials"]) == 5


def test_storage_is_found_as_sqlite_journal_or_recorded_url(tmp_path):
    (tmp_path / "study.db").touch()
    assert find_storage(tmp_path) == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    (tmp_path / "study.db").unlink()
    (tmp_path / "study.journal").touch()
    assert find_storage(tmp_path).endswith("study.journal")
    (tmp_path / "study.journal").unlink()
    (tmp_path / "storage.txt").write_text("postgresql://optuna@db/effscale\n")
    assert find_storage(tmp_path) == "postgresql://optuna@db/effscale"
    (tmp_path / "storage.txt").write_text("journal:///shared/sweeps/quick.log\n")  # search.storage's form
    assert find_storage(tmp_path) == "/shared/sweeps/quick.log"


def test_a_relative_storage_is_recorded_absolute_so_the_dashboard_finds_it_from_any_folder(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from effscale.storages import absolute
    from effscale.workers import record_storage

    monkeypatch.chdir(tmp_path)
    assert absolute("journal://runs/s.log") == f"journal://{tmp_path / 'runs' / 's.log'}"
    assert absolute("sqlite:///runs/s.db") == f"sqlite:///{tmp_path / 'runs' / 's.db'}"
    assert absolute("sqlite:////abs/s.db") == "sqlite:////abs/s.db"
    assert absolute("postgresql://u:p@db/x") == "postgresql://u:p@db/x"
    assert absolute("journal://~/s.log") == f"journal://{os.path.expanduser('~/s.log')}"  # as it is opened
    (tmp_path / "sweep").mkdir()
    record_storage(SimpleNamespace(opts={"storage": "journal://runs/s.log"}, sweep_dir=tmp_path / "sweep"))
    monkeypatch.chdir("/")
    assert find_storage(tmp_path / "sweep") == str(tmp_path / "runs" / "s.log")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_dashboard_listens_on_an_ipv6_address(sweep):
    server = serve(find_storage(sweep), "::1", port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.server_port}/api/studies", timeout=30) as response:
            assert [s["study_name"] for s in json.load(response)["study_summaries"]] == ["quick"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_sqlite_file_given_as_a_plain_path_is_served_as_sqlite(sweep):
    from effscale.dashboard import dashboard_url

    assert dashboard_url(str(sweep / "study.db")) == f"sqlite:///{(sweep / 'study.db').resolve()}"
    with serving(dashboard_url(str(sweep / "study.db"))) as server:
        studies = get_json(server.server_port, "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["quick"]


def test_dashboard_serves_a_journal_file_study(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "elsewhere" / "quick.log"
    journal.parent.mkdir()
    storage = JournalStorage(JournalFileBackend(str(journal)))
    optuna.create_study(study_name="journal", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), 3)
    (tmp_path / "storage.txt").write_text(f"journal://{journal}\n")
    with serving(find_storage(tmp_path)) as server:
        [study] = get_json(server.server_port, "/api/studies")["study_summaries"]
        assert study["study_name"] == "journal"
        assert len(get_json(server.server_port, f"/api/studies/{study['study_id']}")["trials"]) == 3


def test_folder_without_a_study_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="no Optuna study here"):
        find_storage(tmp_path)
    out = run_cli("dashboard", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert out.stderr.strip() == f"effscale dashboard: {tmp_path / 'missing'}: no such sweep folder"


def test_cli_dashboard_serves_the_sweep_on_localhost_until_stopped(sweep):
    import re
    import select
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-m", "effscale.cli", "dashboard", str(sweep), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 60)
        line = server.stdout.readline() if ready else ""
        found = re.search(r"http://([\d.]+):(\d+)/dashboard", line)
        if not found:
            server.kill()
            pytest.fail(f"no URL from the dashboard within 60 s: {line!r} {server.communicate()[1][-2000:]}")
        host, port = found.group(1), int(found.group(2))
        assert host == "127.0.0.1"  # the address the socket is bound to, not only the default asked for
        assert [s["study_name"] for s in get_json(port, "/api/studies")["study_summaries"]] == ["quick"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    with pytest.raises(OSError):  # stopped: nothing listens there any more
        get_json(port, "/api/studies")


def test_the_banner_of_a_database_server_study_hides_its_password(monkeypatch, capsys):
    from types import SimpleNamespace

    from effscale import dashboard

    server = SimpleNamespace(server_address=("127.0.0.1", 8080), serve_forever=lambda: None, server_close=lambda: None)
    monkeypatch.setattr(dashboard, "serve", lambda storage, host, port: server)
    dashboard.run(None, storage="postgresql://optuna:s3cret@db.cluster/effscale")
    assert capsys.readouterr().out == ("optuna-dashboard for postgresql://optuna:***@db.cluster/effscale: "
                                       "http://127.0.0.1:8080/dashboard  (Ctrl-C stops)\n")


def test_dashboard_without_a_folder_or_storage_or_on_a_taken_port_is_one_line(sweep, capsys):
    from effscale import cli

    assert cli.main(["dashboard"]) == 2
    assert capsys.readouterr().err == "effscale dashboard: name a sweep folder (results/<sweep>) or --storage URL\n"
    assert cli.main(["dashboard", str(sweep), "--storage", "postgresql://u:secret@db/x"]) == 2
    assert capsys.readouterr().err == (f"effscale dashboard: {sweep} and --storage postgresql://u:***@db/x: name the "
                                       "study once, by its sweep folder or by --storage\n")
    with serving(find_storage(sweep)) as taken:
        assert cli.main(["dashboard", str(sweep), "--port", str(taken.server_port)]) == 2
    assert capsys.readouterr().err == (f"effscale dashboard: --host 127.0.0.1 --port {taken.server_port}: "
                                       "cannot listen there (Address already in use)\n")


def test_a_missing_or_corrupt_storage_is_one_line_and_no_file_is_created(tmp_path, capsys):
    from effscale import cli

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(bytes(range(256)) * 16)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "study.db").write_bytes(garbage.read_bytes())
    missing_db, missing_log = tmp_path / "missing.db", tmp_path / "missing.log"
    notes = tmp_path / "notes.txt"  # a text file given as a journal: Optuna would read no study in it and serve that
    notes.write_text("garbage\n")
    not_optuna = "not a readable Optuna storage (file is not a database)"
    cases = [(["--storage", f"sqlite:///{missing_db}"], f"storage sqlite:///{missing_db}: no such SQLite file"),
             (["--storage", f"sqlite:///{garbage}"], f"storage sqlite:///{garbage}: {not_optuna}"),
             ([str(sweep)], f"storage sqlite:///{sweep / 'study.db'}: {not_optuna}"),
             (["--storage", f"journal://{missing_log}"], f"storage {missing_log}: no such file"),
             (["--storage", str(missing_log)], f"storage {missing_log}: no such file"),
             (["--storage", str(missing_db)], f"storage {missing_db}: no such file"),  # SQLite or journal: unknown
             (["--storage", str(notes)], f"storage {notes}: not an Optuna journal file (its first line is no "
                                         "journal record)")]
    for args, message in cases:
        assert cli.main(["dashboard", *args, "--port", "0"]) == 2
        assert capsys.readouterr().err == f"effscale dashboard: {message}\n"
    assert sorted(os.listdir(tmp_path)) == ["garbage.db", "notes.txt", "sweep"] and os.listdir(sweep) == ["study.db"]


def test_a_study_database_missing_a_table_of_its_trials_is_one_line_not_a_server_that_fails(sweep, capsys):
    import sqlite3

    from effscale import cli

    with contextlib.closing(sqlite3.connect(sweep / "study.db")) as db:
        db.execute("DROP TABLE trial_values")
    assert cli.main(["dashboard", str(sweep), "--port", "0"]) == 2
    assert capsys.readouterr().err == (f"effscale dashboard: storage sqlite:///{sweep / 'study.db'}: not a readable "
                                       "Optuna storage (no such table: trial_values)\n")


def test_an_unreachable_postgres_is_one_line_without_its_password():
    out = run_cli("dashboard", "--storage", "postgresql://user:secret@127.0.0.1:1/db", "--port", "0", timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "secret" not in out.stderr
    assert out.stderr.startswith("effscale dashboard: storage postgresql://user:***@127.0.0.1:1/db: "
                                 "not a readable Optuna storage (")
