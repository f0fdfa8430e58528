"""A private PostgreSQL server for tests: initdb + pg_ctl on 127.0.0.1, stopped by PID at the end (the pytest
fixture `postgres` in tests/conftest.py)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import kill_tree
from tests.helpers.tracking_server import free_port


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    if not found:
        pytest.fail(f"PostgreSQL's {name} is not installed: run `bash .ci/system-deps.sh` (apt package postgresql)")
    return found if isinstance(found, str) else found[0]


def postgres_server() -> Iterator[tuple[str, int]]:
    """A private PostgreSQL cluster on 127.0.0.1 (initdb + pg_ctl, as the postgres user when run as root, in a
    directory of its own: pytest's temporary root is private to root), with a database `mlflow`; yields its
    SQLAlchemy URL and port. Stopped and removed at the end."""
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="cutmix-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for d in (root, sock):
            os.chown(d, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    pid = None
    try:
        subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "-o",
                        f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}", "start"], check=True,
                       capture_output=True, timeout=120)
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        subprocess.run([*as_user, _pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "mlflow"], check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", port
    finally:
        if pid is not None:
            subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
            kill_tree(pid)
        shutil.rmtree(root, ignore_errors=True)
