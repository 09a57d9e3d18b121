"""A command's own lines reach the terminal; native output, warnings and other libraries'
logs go to the run's log file."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import warnings

from pipelines import console


def test_native_output_warnings_and_other_loggers_go_to_the_log_file(tmp_path, capfd):
    with console.command_output(tmp_path, "demo", verbose=False) as log_file:
        assert console.native_log() == log_file
        os.write(1, b"native stdout, as the JVM writes it\n")
        subprocess.run(["sh", "-c", "echo child stderr >&2"], check=True)  # started inside: inherits the file
        print("own result line")
        logging.getLogger("pipelines.crom.ingest").info("CROM batch 0: 10 records")
        logging.getLogger("pipelines.crom.ingest").debug("batch 0 steps")
        logging.getLogger("py4j.clientserver").warning("a library's line")
        warnings.warn("a Python warning", UserWarning, stacklevel=1)
    assert console.native_log() is None
    out, err = capfd.readouterr()
    assert out == "own result line\n"
    assert err == "crm: CROM batch 0: 10 records\n"
    kept = log_file.read_text()
    for line in ("native stdout", "child stderr", "INFO pipelines.crom.ingest: CROM batch 0", "DEBUG pipelines.crom.ingest: batch 0 steps",
                 "WARNING py4j.clientserver: a library's line", "UserWarning: a Python warning"):  # fmt: skip
        assert line in kept, line
    assert log_file.parent == tmp_path and log_file.name.startswith("crm-demo-")


def test_warnings_reach_the_log_after_a_library_turned_capture_on_and_the_filter_was_reset(tmp_path):
    # Great Expectations calls logging.captureWarnings(True); a later catch_warnings exit restores
    # showwarning, so a second captureWarnings(True) would do nothing.
    with warnings.catch_warnings():
        logging.captureWarnings(True)
    try:
        with console.command_output(tmp_path, "demo", verbose=False) as log_file:
            warnings.warn("after a library's capture", UserWarning, stacklevel=1)
        assert "UserWarning: after a library's capture" in log_file.read_text()
    finally:
        logging.captureWarnings(False)


def test_verbose_shows_everything_and_leaves_the_descriptors(tmp_path, capfd):
    with console.command_output(tmp_path, "demo", verbose=True) as log_file:
        assert console.native_log() is None
        os.write(1, b"native\n")
        logging.getLogger("py4j.clientserver").warning("a library's line")
    out, err = capfd.readouterr()
    assert out == "native\n" and err == "crm: a library's line\n"
    assert "a library's line" in log_file.read_text()  # the file has it too


def test_old_log_files_are_removed_beyond_the_newest(tmp_path):
    for n in range(console.KEEP_LOGS + 5):
        (tmp_path / f"crm-ingest-20260101T0000{n:02d}Z-1.log").write_text("")
    (tmp_path / "crm-demo-20200101T000000Z-1.log").write_text("")  # another command's: kept
    fresh = console.new_log_file(tmp_path, "ingest")
    fresh.write_text("")
    kept = sorted(p.name for p in tmp_path.glob("crm-ingest-*.log"))
    assert len(kept) == console.KEEP_LOGS and fresh.name in kept and "crm-ingest-20260101T000000Z-1.log" not in kept
    assert (tmp_path / "crm-demo-20200101T000000Z-1.log").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_throttles_elsewhere():
    terminal = _Terminal()
    progress = console.Progress(terminal)
    progress.update("produced 10/30 events")
    progress.update("produced 20/30")
    progress.done("produced 30 events")
    assert terminal.getvalue() == "\rproduced 10/30 events\rproduced 20/30       \rproduced 30 events\n"

    piped = io.StringIO()
    progress = console.Progress(piped, every=3600)
    for n in range(5):
        progress.update(f"produced {n}")
    progress.done("produced 5 events")
    assert piped.getvalue() == "produced 0\nproduced 5 events\n"  # the first update, then the end


def test_ivy_progress_counts_what_the_report_says():
    assert console.ivy_progress([":: loading settings"]) is None
    lines = ["\tfound io.delta#delta-spark_4.1_2.13;4.4.0 in central", "downloading https://repo1/x.jar ...", "\tfound a#b;1 in central"]
    assert console.ivy_progress(lines) == "Spark packages: 2 resolved, 1 downloaded"


def test_crm_debug_zero_is_off(monkeypatch):
    monkeypatch.setenv("CRM_DEBUG", "0")
    assert not console.debug_requested() and not console.verbose_requested(False)
    monkeypatch.setenv("CRM_DEBUG", "1")
    assert console.verbose_requested(False)
