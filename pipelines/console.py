"""What a `crm` command shows: its own lines, and a progress line for long steps.

Everything else goes to one log file per run under `<cache>/logs/`: the JVM's output (Ivy's
resolution report, Spark's log4j lines, Python workers' stderr), Python warnings and other
libraries' loggers. The process's file descriptors 1 and 2 point at that file, so output
written below Python (the JVM and the processes it starts inherit them) lands there too,
while `print` and the project's loggers write to the terminal through copies of the
original descriptors. `--verbose` or CRM_DEBUG=1 leaves the descriptors alone and shows
every logger.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TextIO

OWN_LOGGERS = ("crm", "pipelines")
_native_log: Path | None = None  # the log file descriptors 1 and 2 point at, during a command
# Libraries whose INFO lines would bury everything else in the log file. kafka-python logs each
# refused connection while a broker starts as an error, so only its critical lines are kept.
QUIETER = {"py4j": logging.WARNING, "great_expectations": logging.WARNING, "kafka": logging.CRITICAL}
KEEP_LOGS = 30  # per command: older log files are removed when a run starts
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def native_log() -> Path | None:
    """The log file that native output (the JVM's) goes to now, or None when it is shown."""
    return _native_log


def debug_requested() -> bool:
    """CRM_DEBUG set to anything but empty, 0, false or no."""
    return os.environ.get("CRM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def verbose_requested(flag: bool) -> bool:
    return flag or debug_requested()


def _own(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


def new_log_file(folder: Path, command: str) -> Path:
    """A fresh log file for this run; the oldest of the command's earlier ones are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    earlier = sorted(folder.glob(f"crm-{command}-*.log"))
    for old in earlier[: max(0, len(earlier) - (KEEP_LOGS - 1))]:
        old.unlink(missing_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return folder / f"crm-{command}-{stamp}-{os.getpid()}.log"


@contextmanager
def command_output(folder: Path, command: str, verbose: bool, native_to_log: bool = True) -> Iterator[Path]:
    """Route one command's output: own lines to the terminal, the rest to the log file it yields.

    `native_to_log` also points descriptors 1 and 2 at the log file (off under spark-submit,
    whose JVM owns the console, and with `verbose`).
    """
    log_file = new_log_file(folder, command)
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, root.handlers[:]
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FILE_FORMAT))
    global _native_log
    redirect = native_to_log and not verbose
    with _descriptors_to(log_file) if redirect else _unchanged():
        _native_log = log_file if redirect else None
        to_console = logging.StreamHandler(sys.stderr)
        to_console.setFormatter(logging.Formatter("crm: %(message)s"))
        to_console.setLevel(logging.INFO)
        if not verbose:
            to_console.addFilter(_own)
        root.handlers = [to_file, to_console]
        root.setLevel(logging.INFO)
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)  # the file gets our step-by-step detail
        for name, level in QUIETER.items():
            logging.getLogger(name).setLevel(level)
        saved_showwarning = warnings.showwarning
        warnings.showwarning = _warning_to_log  # not logging.captureWarnings: a library's earlier call makes ours a no-op
        try:
            yield log_file
        finally:
            warnings.showwarning = saved_showwarning
            _native_log = None
            root.handlers, root.level = saved_handlers, saved_level
            to_file.close()


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    text = warnings.formatwarning(message, category, filename, lineno, line)
    logging.getLogger("py.warnings").warning("%s", text.rstrip())


@contextmanager
def _unchanged() -> Iterator[None]:
    yield


@contextmanager
def _descriptors_to(log_file: Path) -> Iterator[None]:
    """Descriptors 1 and 2 to the log file; sys.stdout and sys.stderr, where they wrote to
    those descriptors, to copies of the old ones (a stream a caller swapped in is kept)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    streams = sys.stdout, sys.stderr
    made = []
    try:
        for fd in (1, 2):
            os.dup2(target, fd)
        if _writes_to(sys.stdout, 1):
            sys.stdout = _text(os.dup(saved[1]), streams[0])
            made.append(sys.stdout)
        if _writes_to(sys.stderr, 2):
            sys.stderr = _text(os.dup(saved[2]), streams[1])
            made.append(sys.stderr)
        yield
    finally:
        for stream in made:
            stream.flush()
            stream.close()
        sys.stdout, sys.stderr = streams
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(target)


def _writes_to(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def _text(fd: int, like: TextIO) -> TextIO:
    encoding = getattr(like, "encoding", None) or "utf-8"
    return io.TextIOWrapper(io.FileIO(fd, "w"), encoding=encoding, errors="replace", line_buffering=True)


class Progress:
    """A line a long step keeps up to date: rewritten in place on a terminal, elsewhere printed
    at most every `every` seconds (so logs and CI output stay short)."""

    def __init__(self, stream: TextIO | None = None, every: float = 10.0):
        self.stream = stream
        self.every = every
        self._last: float | None = None  # when a line was last printed (not on a terminal)
        self._width = 0

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def update(self, text: str) -> None:
        out = self._out()
        if out.isatty():
            out.write("\r" + text.ljust(self._width))
            out.flush()
            self._width = len(text)
        elif self._last is None or time.monotonic() - self._last >= self.every:
            out.write(text + "\n")
            out.flush()
            self._last = time.monotonic()

    def done(self, text: str) -> None:
        out = self._out()
        out.write(("\r" + text.ljust(self._width) if self._width else text) + "\n")
        out.flush()
        self._width = 0


@contextmanager
def following(log_file: Path | None, describe: Callable[[list[str]], str | None], progress: Progress) -> Iterator[None]:
    """While the block runs, feed the lines appended to `log_file` to `describe` and show what
    it makes of them (e.g. how many packages Ivy has resolved); nothing without a log file."""
    if log_file is None:
        yield
        return
    start = log_file.stat().st_size if log_file.exists() else 0
    stop = threading.Event()

    def watch() -> None:
        seen: list[str] = []
        with log_file.open("r", encoding="utf-8", errors="replace") as handle:
            handle.seek(start)
            while not stop.wait(0.5):
                seen += handle.read().splitlines()
                text = describe(seen)
                if text:
                    progress.update(text)

    watcher = threading.Thread(target=watch, name="crm-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=2)


def ivy_progress(lines: list[str]) -> str | None:
    """What Ivy's resolution report says so far, in one line."""
    found = sum(1 for line in lines if line.lstrip().startswith("found "))
    downloaded = sum(1 for line in lines if line.lstrip().startswith("downloading "))
    if not found and not downloaded:
        return None
    return f"Spark packages: {found} resolved, {downloaded} downloaded"
