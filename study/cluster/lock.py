"""One writer per output directory: `<out>/.lock`, held for the life of the command that writes there.

Primitive: the lock file is created with ``open(O_CREAT | O_EXCL)``, which is atomic on a local disk and on NFS v3+
(the server does the exclusive create; Linux's NFS client has passed it through since 2.6.5), and so on the
NFS/EBS/CephFS volumes behind Kubernetes PVCs. ``flock``/``fcntl`` locks are not used: on NFS they go through the
NLM lock manager (v3) or lease state (v4), which some servers and CSI drivers do not run, and a lock the server
forgets after a restart or a lost lease silently stops excluding anyone, so two drivers would each believe they hold
it. An exclusively created file cannot be silently forgotten; its weakness is the opposite (a crashed holder leaves
it behind), which the record inside it answers:

- the file holds ``{host, pid, started, proc_start, command}``, written before anyone can read it as the holder's;
- a heartbeat thread touches it every `HEARTBEAT_S` seconds while the command runs;
- a lock whose holder is on this host and no longer alive (or whose PID now belongs to a process started at another
  time) is stale, and so is a lock from another host whose heartbeat stopped `STALE_AFTER_S` seconds ago (a pod on
  another node, or a retried RayJob's new head, cannot see the old holder's processes): it is taken over with a
  warning, so ``--resume`` after a crash works;
- a take-over is serialised by a second exclusively created file (``.lock.takeover``), so two commands finding the
  same stale lock cannot both take it.

A live holder makes `acquire` raise LockError: "<out> is in use by PID 123 on HOST since 2026-12-02 16:40:03 UTC
(...)", which the CLI prints as one line, exit 2.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0  # the holder touches the file this often
STALE_AFTER_S = 300.0  # a lock from another host untouched this long is stale (10 missed heartbeats; clock skew)


class LockError(ValueError):
    """The output directory is held by another live command; one-line message (exit 2)."""


def _proc_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None if there is no such process."""
    try:
        import psutil  # a dependency of ray[default]; imported late (start-up time)

        return float(psutil.Process(pid).create_time())
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied, ZombieProcess: not a live holder
        return None


def _alive(record: dict[str, Any]) -> bool:
    """Whether the record's process, on this host, is the one that wrote it (a reused PID is not)."""
    started = _proc_start(int(record.get("pid", -1)))
    if started is None:
        return False
    recorded = record.get("proc_start")
    return not recorded or not started or abs(float(recorded) - started) < 2.0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class OutputLock:
    """The lock on one output directory. `acquire()` then `release()` (or use it as a context manager)."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir).expanduser().resolve()
        self.path = self.dir / LOCK_NAME
        self.record: dict[str, Any] = {}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- reading and judging a lock someone left -------------------------------------------------------------

    def read(self) -> dict[str, Any] | None:
        """The holder's record; {} if the file exists but is empty or unreadable (being written, or torn)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return {}
        return record if isinstance(record, dict) else {}

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def stale(self, record: dict[str, Any]) -> str | None:
        """Why the lock `record` no longer excludes anyone (a sentence), or None while its holder may be alive."""
        if not record:  # empty: a writer between create and write, or one that died there
            return f"an empty lock untouched for {self._age():.0f} s" if self._age() > 60 else None
        if record.get("host") == socket.gethostname():
            return None if _alive(record) else f"PID {record.get('pid')} on this host is no longer running"
        age = self._age()
        if age > STALE_AFTER_S:
            return f"its holder on {record.get('host')} stopped its heartbeat {age:.0f} s ago"
        return None

    def describe(self, record: dict[str, Any]) -> str:
        since = _when(float(record["started"])) if record.get("started") else "an unknown time"
        return f"{self.dir} is in use by PID {record.get('pid', '?')} on {record.get('host', '?')} since {since}"

    # -- taking and giving back ------------------------------------------------------------------------------

    def _create(self) -> bool:
        """Create the lock file exclusively with our record; False if it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "proc_start": _proc_start(os.getpid()), "command": " ".join(sys.argv)[:500]}
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
            fh.flush()
            os.fsync(fh.fileno())
        self.record = me
        return True

    def _take_over(self, seen: dict[str, Any], why: str) -> bool:
        """Replace the stale lock holding `seen`; False if someone else changed it meanwhile."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a take-over that died half-way leaves its guard: old guards are removed, then try again
                if time.time() - guard.stat().st_mtime > 60:
                    guard.unlink()
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            if self.read() != seen:
                return False
            self.path.unlink(missing_ok=True)
            if not self._create():
                return False
            print(f"warning: took over the lock on {self.dir}: {why} (continuing)", file=sys.stderr, flush=True)
            return True
        finally:
            guard.unlink(missing_ok=True)

    def acquire(self) -> OutputLock:
        """Take the lock (the directory must exist). Raises LockError while another live command holds it."""
        for _ in range(20):
            if self._create():
                break
            seen = self.read()
            if seen is None:
                continue  # released between our create and our read
            why = self.stale(seen)
            if why is None:
                if not seen:  # a holder that has created but not yet written its record
                    time.sleep(0.1)
                    continue
                raise LockError(f"{self.describe(seen)} (wait for it to finish, or stop it; a lock left by a "
                                f"crashed command is taken over on its own; the lock is {self.path})")
            if self._take_over(seen, why):
                break
            time.sleep(0.1)
        else:
            raise LockError(f"could not take the lock {self.path} (it keeps changing; is another command starting?)")
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="output-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a volume gone for a moment; the next beat tries again

    def held(self) -> bool:
        """Whether the file on disk is still ours."""
        record = self.read()
        return bool(record) and record.get("pid") == self.record.get("pid") and \
            record.get("started") == self.record.get("started")

    def release(self) -> None:
        """Give the lock back (only if it is still ours: a take-over by someone else is never undone)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2)
            self._beat = None
        if self.record and self.held():
            self.path.unlink(missing_ok=True)
        self.record = {}

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------------------------
# The command's locks: the CLI opens a session; every stage's output directory is locked on first use in it.

_SESSION: dict[str, Any] = {"active": False, "locks": {}}


def begin_session() -> None:
    """Called by the CLI before a command: from now on `hold` locks output directories until `end_session`."""
    _SESSION["active"] = True


def hold(out_dir: str | Path) -> None:
    """Lock `out_dir` for the rest of the command (once per directory; a no-op outside a CLI session, so library
    callers and in-process tests that share a directory are not locked out by themselves)."""
    if not _SESSION["active"]:
        return
    key = str(Path(out_dir).expanduser().resolve())
    if key not in _SESSION["locks"]:
        _SESSION["locks"][key] = OutputLock(key).acquire()


def end_session() -> None:
    """Release every lock the command took."""
    locks, _SESSION["locks"] = _SESSION["locks"], {}
    _SESSION["active"] = False
    for lock in locks.values():
        lock.release()
