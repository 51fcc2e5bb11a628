"""Command-line plumbing shared by train.py and infer.py: config flags, readable logging, errors and interrupts."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import NoReturn

from lit_forecast import config as cfg
from lit_forecast import layout
from lit_forecast.errors import ConfigError, cut


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --data, --storage, --name, --set, --print-config."""
    parser.add_argument("--config", default=None, help="YAML config (default: configs/local.yaml)")
    parser.add_argument("--data", help="CSV to use instead of data.source: local path, URL or pyarrow.fs URI")
    parser.add_argument("--storage", help="where runs live (run.storage): a folder or a URI such as s3://bucket/prefix")
    parser.add_argument("--name", help="run name (run.name): the run lives in <storage>/<name>")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.d_model=128 (repeatable)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def load_config(args: argparse.Namespace) -> cfg.Config:
    """The config file with --set overrides, then the dedicated flags (which win).

    --data, --storage and --name are taken as plain strings (``--name 2024`` stays a name).
    """
    for flag in ("data", "storage"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise ConfigError(f"--{flag} is empty: give a path or a URI")
    config = cfg.load(args.config, list(args.set))
    if args.data:
        config.data.source = args.data
        if args.data != cfg.NAB_NYC_TAXI_URL:
            config.data.sha256 = None  # the configured checksum belongs to the NAB file
    if args.storage:
        config.run.storage = args.storage
    if args.name is not None:  # an empty --name is refused below, not ignored
        config.run.name = args.name
    config = cfg.validate(config)
    if config.run.name is not None:
        layout.check_run_name(config.run.name)
    return config


def setup_logging(verbose: bool = False) -> None:
    """One readable line per event on stderr; third-party chatter down to warnings.

    The handler sits on the package logger, not the root, because ``ray.init`` reconfigures
    the root logger.
    """
    package = logging.getLogger("lit_forecast")
    package.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    package.propagate = False
    quiet_third_parties()


def quiet_third_parties() -> None:
    """Silence the known-noisy loggers and warnings of Lightning, Ray and friends."""
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "pytorch_lightning",
        "ray",
        "urllib3",
        "matplotlib",
        "botocore",
        "boto3",
        "s3fs",
        "aiobotocore",
    ):  # "Found endpoint for s3 via ..." on every S3 client
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*litlogger.*",
        ".*The number of training batches.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*enable_nested_tensor.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


MESSAGE_LINE_MAX = 1000  # a longer line is a value shown whole by mistake: cut, with its size


def die(message: str) -> NoReturn:
    """Print a user-facing error and exit with status 2 (each line at most MESSAGE_LINE_MAX characters)."""
    lines = [cut(line, MESSAGE_LINE_MAX) for line in message.splitlines()] or [""]
    print("error: " + "\n".join(lines), file=sys.stderr)
    raise SystemExit(2)


# -- interrupts ---------------------------------------------------------------------------------------

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report them
SIGNAL_WORDS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
_received: list[int] = []  # signals seen by the current `interrupts` block, in order
_raised: list[int] = []  # the signal our handler turned into a KeyboardInterrupt (one at most)
_nudged: list[int] = []  # set by the watcher when it raises the first signal in the main thread again
_self_sent: list[int] = []  # signals the nudge sent itself (they reach the wakeup fd too): not a second
NUDGE_AFTER_S = 15.0  # Ray Train's own abort takes a few seconds; longer than this, the signal was swallowed
_saying = threading.Lock()  # one line, whether the main thread or the watcher says it
_said: list[int] = []  # the signal the line was said for (one at most)
_hard_stop: list[Callable[[], None]] = []  # run before a second signal ends the process at once


def at_hard_stop(callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` (quick, best effort: e.g. release a lock) if a second signal ends the process at once;
    returns a function that unregisters it."""
    _hard_stop.append(callback)
    return lambda: _hard_stop.remove(callback) if callback in _hard_stop else None


@contextlib.contextmanager
def interrupts(describe: Callable[[int], str]) -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block ends the script with ``error: <describe(signal)>`` and status 130 or 143.

    SIGTERM is raised like Ctrl-C (a KeyboardInterrupt), so every cleanup on the way out runs. Ray
    installs handlers of its own (``ray.init`` for SIGTERM, Ray Train's ``fit`` for SIGINT) that end
    the block with other exceptions; the signal is still seen, through ``signal.set_wakeup_fd``,
    which Python feeds whichever Python handler is installed. A second signal while the first is
    unwinding ends the process at once, with the same line and status, after the ``at_hard_stop``
    callbacks. ``describe`` says what was interrupted, what was kept and the command that resumes.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    _received.clear()
    _raised.clear()
    _nudged.clear()
    _self_sent.clear()
    _said.clear()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt)
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(read_end, describe, done), name="interrupt-watch", daemon=True)
    watcher.start()
    stopping: int | None = None
    try:
        yield
    except BaseException as err:
        signum = _signal_behind(err)
        if signum is None:  # not an interruption: reported as it is
            raise
        stopping = signum
        _stop(describe, signum)
    else:
        if _received:  # a library caught the signal and returned: still an interruption
            stopping = _received[0]
            _stop(describe, stopping)
    finally:
        done.set()
        signal.set_wakeup_fd(previous_fd)
        if stopping is None:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
        else:  # said and on the way out (Ray shuts down at exit): another signal just ends it, quietly
            for each in EXIT_STATUS:
                signal.signal(each, lambda *_: os._exit(EXIT_STATUS[stopping]))
        os.close(write_end)  # ends the watcher's read
        watcher.join(timeout=5)
        os.close(read_end)


def _signal_behind(err: BaseException) -> int | None:
    """The first signal received, if ``err`` is how it ended the block (the watcher may be a moment behind)."""
    if not _received and isinstance(err, (KeyboardInterrupt, SystemExit)):
        for _ in range(50):
            if _received:
                break
            time.sleep(0.01)
    if _received:
        return _received[0]
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGTERM if err.args == (SIGNAL_WORDS[signal.SIGTERM],) else signal.SIGINT
    return None


def _raise_interrupt(signum, frame) -> None:
    """The first signal unwinds the main thread like Ctrl-C; a later one is the watcher's to act on, unless the
    watcher nudges the main thread again because the first was swallowed (``_nudged``)."""
    if _raised and not _nudged:
        return
    _raised.append(signum)
    _nudged.clear()
    raise KeyboardInterrupt(SIGNAL_WORDS.get(signum, f"signal {signum}"))


def _nudge(signum: int, done: threading.Event) -> None:
    """If the block still runs NUDGE_AFTER_S after a signal (a library took it and carried on), raise it again."""
    if not done.wait(NUDGE_AFTER_S):
        _nudged.append(signum)
        _self_sent.append(signum)
        signal.pthread_kill(threading.main_thread().ident, signum)  # a real signal: it cuts short a blocking call


def _watch(read_end: int, describe: Callable[[int], str], done: threading.Event) -> None:
    """Record each signal; on the first, make sure it ends the block; on the second, report and end the process now."""
    while True:
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum not in EXIT_STATUS:
                continue
            if signum in _self_sent:  # the nudge's own, not the user's
                _self_sent.remove(signum)
                continue
            _received.append(signum)
            if len(_received) == 1:
                threading.Thread(target=_nudge, args=(signum, done), name="interrupt-nudge", daemon=True).start()
            if len(_received) >= 2:
                for callback in list(_hard_stop):
                    try:
                        callback()
                    except Exception:  # best effort: the process ends either way
                        pass
                _say(describe, _received[0], again=True)
                os._exit(EXIT_STATUS[_received[0]])


def _say(describe: Callable[[int], str], signum: int, again: bool = False) -> None:
    """Print the one line, unless it has been printed (by the main thread or the watcher)."""
    with _saying:
        if _said:
            return
        _said.append(signum)
        try:
            text = describe(signum)
        except Exception as err:  # the line must come out even if looking at the run fails
            text = f"interrupted ({SIGNAL_WORDS[signum]}); the state could not be read back ({type(err).__name__})"
        if again:
            text = "stopped at once by a second signal: " + text
        sys.stdout.flush()
        print(f"error: {text}", file=sys.stderr, flush=True)


def _stop(describe: Callable[[int], str], signum: int) -> NoReturn:
    _say(describe, signum)
    raise SystemExit(EXIT_STATUS[signum])


def permission_message(err: PermissionError) -> str:
    """One paragraph for a file or folder this user may not read or write, naming it."""
    text = str(err)
    path = err.filename or next(iter(re.findall(r"'(/[^']+)'", text)), None)
    what = cut(str(path)) if path else "a file or folder"
    why = cut(err.strerror or (text.splitlines()[0] if text else "permission denied"))
    return (
        f"permission denied on {what} ({why}): this user may not read or write it; change its permissions, or "
        "give a path this user may use"
    )
