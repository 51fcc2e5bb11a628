"""One driver per run name: ``<run>/run.lock``, held while train.py works on the run folder.

The lock file holds who took it (host, pid, start time, command). Its modification time is a
heartbeat, refreshed every ``HEARTBEAT_S`` while the holder lives.

- **Local disks** (and shared file systems that honour it): the file is created with
  ``O_CREAT | O_EXCL``, so of two drivers started at once exactly one gets it; the other is
  refused at once with the holder's host, pid and start time. A lock whose holder is gone is
  taken over with a warning: on the same host, when its pid no longer runs; from another host,
  when its heartbeat is older than ``STALE_AFTER_S``.
- **Object stores** (``s3://``, ``gs://``): pyarrow has no create-if-absent, so the lock is
  advisory. A lock younger than ``STALE_AFTER_S`` refuses the run; an older one is taken over
  with a warning. The new lock is written, then read back after a moment: of two drivers that
  wrote at once, the one whose lock did not survive steps back. The rule stays: one driver per
  run name. A driver that crashed leaves a lock that refuses reruns for ``STALE_AFTER_S``; the
  message names the file to delete to go on at once.

The lock is released (its file deleted, if it is still ours) when the driver exits normally or
with an exception. If it created the run folder and the run never got as far as writing its
config (validation failed), the folder is removed too: a failed start leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

from lit_forecast import cli, storage
from lit_forecast.errors import RunError
from lit_forecast.layout import LOCK_FILE

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # 10 heartbeats missed: the holder is gone
SETTLE_S = 2.0  # object stores: wait before reading our lock back


@contextlib.contextmanager
def _unwritable_as_run_error(run: str):
    """A full or read-only storage folder met inside the block becomes the RunError that says so."""
    try:
        yield
    except OSError as err:
        if storage.is_unwritable(err):
            raise RunError(storage.unwritable_message(run, err)) from None
        raise


class RunLock:
    """``with RunLock(run):`` holds ``<run>/run.lock``; see the module docstring for the rules."""

    def __init__(self, run: str):
        self.run, self.path = run, storage.join(run, LOCK_FILE)
        self.local = not storage.is_uri(run)
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
            "token": uuid.uuid4().hex,
        }
        self.created = False  # we made the run folder: remove it if the run never really starts
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._forget = lambda: None

    def __enter__(self) -> RunLock:
        self.created = not storage.exists(self.run)
        (self._acquire_local if self.local else self._acquire_remote)()
        self._beat = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._beat.start()
        self._forget = cli.at_hard_stop(self.release)  # a second Ctrl-C ends the process at once: still released
        return self

    def __exit__(self, *exc) -> None:
        self._forget()
        self.release()

    def keep(self) -> None:
        """The folder now holds a run (config or data written): keep it whatever happens next."""
        self.created = False

    def release(self) -> None:
        """Stop the heartbeat, delete the lock if it is still ours, and a folder we made for nothing."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if (self._read() or {}).get("token") == self.holder["token"]:
            try:
                storage.delete(self.path)
            except OSError as err:  # a read-only folder: the next driver here takes a dead pid's lock over
                log.warning("could not remove the lock %s (%s): the next run takes it over", self.path, err)
        if self.created:
            log.info("removing %s: the run did not start", self.run)
            if self.local:
                shutil.rmtree(self.run, ignore_errors=True)
            else:
                storage.delete(self.run)
            self.created = False

    # -- local disks ------------------------------------------------------------------------------

    def _acquire_local(self) -> None:
        try:
            os.makedirs(self.run, exist_ok=True)
        except OSError as err:
            raise RunError(
                f"cannot create the run folder {self.run}: {err.strerror or err}; choose another --storage"
            ) from None
        text = json.dumps(self.holder, indent=2) + "\n"
        for _ in range(5):
            with _unwritable_as_run_error(self.run):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except PermissionError as err:
                    raise RunError(
                        f"cannot write the lock {self.path}: {err.strerror}; check the run folder's permissions"
                    ) from None
                except FileExistsError:
                    seen = self._read_text()
                    holder, age = _parse(seen), self._age()
                    if not self._stale(holder, age):
                        raise RunError(self._held_message(holder, age)) from None
                    self._warn_takeover(holder, age)
                    self._remove_stale_local(seen)
                    continue
                try:
                    with os.fdopen(fd, "w") as stream:
                        stream.write(text)
                except OSError:  # created, but no room for its bytes
                    os.unlink(self.path)
                    raise
            return
        raise RunError(
            f"could not take the lock {self.path}: other processes keep taking it; run one driver per run name"
        )

    def _remove_stale_local(self, seen: str | None) -> None:
        """Move the stale lock aside and delete it, unless someone replaced it meanwhile."""
        aside = f"{self.path}.stale-{self.holder['token'][:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process removed it first: try to create ours
        with open(aside, encoding="utf-8", errors="replace") as stream:
            moved = stream.read()
        if moved != seen:  # a live lock taken in between: put it back (link fails if one exists already)
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.unlink(aside)

    def _stale(self, holder: dict | None, age: float | None) -> bool:
        if age is None:  # gone since we looked
            return True
        if holder is None:  # unreadable: a holder between create and write, or junk
            return age > 30
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if holder["pid"] == os.getpid():  # our pid from an earlier life (a restarted container)
                return True
            return not _alive(holder["pid"])
        return age > STALE_AFTER_S

    # -- object stores ----------------------------------------------------------------------------

    def _acquire_remote(self) -> None:
        if storage.exists(self.path):
            holder, age = self._read(), self._age()
            dead_here = holder is not None and holder.get("host") == socket.gethostname() and self._stale(holder, age)
            if age is not None and age <= STALE_AFTER_S and not dead_here:
                raise RunError(self._held_message(holder, age))
            self._warn_takeover(holder, age)
        storage.write_json(self.path, self.holder)
        time.sleep(SETTLE_S)
        now = self._read()
        if (now or {}).get("token") != self.holder["token"]:
            raise RunError(
                self._held_message(now, self._age()) + " (it wrote its lock at the same moment as this driver)"
            )

    # -- both -------------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (self._read() or {}).get("token") != self.holder["token"]:
                    log.warning(
                        "the lock %s is no longer this driver's: another driver may be using the run", self.path
                    )
                    return
                if self.local:
                    os.utime(self.path)
                else:
                    storage.write_json(self.path, self.holder)
            except OSError as err:  # a storage hiccup: try again at the next beat
                log.debug("heartbeat of %s failed: %s", self.path, err)

    def _read_text(self) -> str | None:
        try:
            return storage.read_text(self.path)
        except (OSError, ValueError):
            return None

    def _read(self) -> dict | None:
        return _parse(self._read_text())

    def _age(self) -> float | None:
        """Seconds since the lock was written or last refreshed; None if it is gone."""
        fs, path = storage.resolve(self.path)
        info = fs.get_file_info(path)
        if info.mtime is None:
            return None
        return max(0.0, time.time() - info.mtime.timestamp())

    def _held_message(self, holder: dict | None, age: float | None) -> str:
        who = (
            f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            if holder
            else "a process that has not finished writing the lock"
        )
        fresh = f"; its heartbeat is {age:.0f} s old" if age is not None else ""
        return (
            f"run {self.run} is in use by another driver ({who}{fresh}): one driver per run name. "
            f"Wait for it to finish, or use --name NEW. If that process is gone, delete {self.path}"
            + ("" if self.local else f" (or wait until the lock is {STALE_AFTER_S / 60:.0f} minutes old)")
        )

    def _warn_takeover(self, holder: dict | None, age: float | None) -> None:
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            if holder
            else "an unreadable lock"
        )
        log.warning(
            "run %s: taking over a stale lock (%s; last heartbeat %s s ago): that driver is gone",
            self.run,
            who,
            "?" if age is None else f"{age:.0f}",
        )


def _parse(text: str | None) -> dict | None:
    try:
        holder = json.loads(text) if text else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: int) -> bool:
    """True if a process with this pid runs on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
