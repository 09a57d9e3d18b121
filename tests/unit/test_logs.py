"""Log datafication: layouts, generic masks, template ids that survive restarts, severity."""

from __future__ import annotations

import pytest
import yaml

from pipelines.config import CONF_DIR, sample_data
from pipelines.crom.logs import LogTemplates, severity
from pipelines.line_layout import LineLayout

HDFS = "<Date> <Time> <Pid> <Level> <Component>: <Content>"


def test_layout_splits_fields_and_message():
    fields = LineLayout(HDFS).split("081109 203615 148 INFO dfs.DataNode$PacketResponder: Received block blk_-16 of size 91178")
    assert fields == {
        "Date": "081109", "Time": "203615", "Pid": "148", "Level": "INFO",
        "Component": "dfs.DataNode$PacketResponder", "Content": "Received block blk_-16 of size 91178",
    }  # fmt: skip
    assert LineLayout(HDFS).split("not a log line") is None


@pytest.mark.parametrize(
    ("layout", "problem"),
    [("<Date> <Time> <Level>", "no <Content> field"), ("<Content> <Content>", "names a field twice"), (r"\[<Content>(", "not a valid pattern")],
)
def test_bad_layouts_are_refused(layout, problem):
    with pytest.raises(ValueError, match=problem):
        LineLayout(layout)


def test_variables_are_masked_by_kind_and_lines_of_one_template_share_an_id():
    miner = LogTemplates()
    first = miner.mine("Connection from 10.0.0.1:5050 to /var/log/app.log took 15ms, id attempt_14_0020_m_01")
    second = miner.mine("Connection from 192.168.7.20:80 to /tmp/x took 3ms, id attempt_99_0001_r_07")
    other = miner.mine("Connection closed by peer")
    assert first.template_id == second.template_id != other.template_id
    assert second.template == "Connection from <IP> to <PATH> took <DURATION>, id <ID>"
    assert second.parameters == ["192.168.7.20:80", "/tmp/x", "3ms", "attempt_99_0001_r_07"]


def test_a_list_of_identifiers_is_one_parameter():
    miner = LogTemplates()
    short = miner.mine("ask 10.2.3.4:50010 to delete blk_-1 blk_2")
    long = miner.mine("ask 10.2.3.4:50010 to delete blk_3 blk_-4 blk_5 blk_6")
    assert short.template_id == long.template_id
    assert long.template == "ask <IP> to delete <ID>"


@pytest.mark.parametrize(
    ("line", "template"),
    [
        ("replica on storage-3.dc2:50010 is stale", "replica on <HOST> is stale"),
        ("resolved cache01.internal in a moment", "resolved <HOST> in a moment"),
        ("peer EDGE-GW-2.corp.example:7443 refused", "peer <HOST> refused"),
        # A camelCase label is code, not a host name: a method and its line stay a code location.
        ("retry from com.acme.billing.InvoiceService.closeMonth:214 now", "retry from com.acme.billing.InvoiceService.closeMonth:<NUM> now"),
        ("fetching https://cdn.example.net/a/b.js?v=3 failed", "fetching <URL> failed"),
        ("bounce from mary.jones+x@mail.example.co.uk queued", "bounce from <EMAIL> queued"),
        ("session 3f2b9c1e-7d4a-4e6b-9a10-2c3d4e5f6a7b expired", "session <UUID> expired"),
        ("snapshot of 2031-04-05 at 17:45:09.123 restored", "snapshot of <DATE> at <TIME> restored"),
        ("rotated at 2031-04-05T17:45:09Z by cron", "rotated at <DATE> by cron"),
        ("uptime 00:01:02 after reboot", "uptime <TIME> after reboot"),
        ("query answered in <1 sec from cache", "query answered in <DURATION> from cache"),
        ("flush took 3 ms on disk", "flush took <DURATION> on disk"),
        ("uploaded 4.5 KB of 12 MiB", "uploaded <SIZE> of <SIZE>"),
        ("worker [job-881] picked a task", "worker <ID> picked a task"),
        ("opened C:\\Temp\\Reports\\june.xlsx for writing", "opened <PATH> for writing"),
        ("copied /srv/data/part-0001.bin to \\\\filer01\\share\\in", "copied <PATH> to <PATH>"),
        ("login ok user=alice role=admin", "login ok user=<VALUE> role=<VALUE>"),
        ("quota exceeded for tenant: acme, plan: gold", "quota exceeded for tenant: acme, plan: gold"),  # see GENERIC_MASKS
    ],
)
def test_generic_masks(line, template):
    assert LogTemplates().mine(line).template == template


def test_words_with_digits_are_not_numbers():
    miner = LogTemplates()
    assert miner.mine("user u0 logged in on tty7").template == "user u0 logged in on tty7"


@pytest.mark.parametrize(
    ("level", "message", "expected"),
    [
        ("INFO", "anything", "info"), ("W", "x", "warn"), ("[error]", "x", "error"), ("notice", "x", "info"),
        ("F", "x", "fatal"), (None, "ERROR: disk full", "error"), (None, "Failed password for root", "error"),
        (None, "Accepted password for alice", "info"), ("unknown-level", "connection refused", "error"),
    ],
)  # fmt: skip
def test_severity(level, message, expected):
    assert severity(level, message) == expected


def test_severity_comes_from_the_layout_level():
    assert LogTemplates(HDFS).mine("081109 203615 148 WARN dfs.DataNode: Slow write of 4 bytes").severity == "warn"


def test_template_ids_survive_restarts_on_real_lines(tmp_path):
    data = sample_data() / "loghub" / "OpenSSH" / "OpenSSH_2k.log"
    if not data.exists():
        pytest.skip(f"sample data not found at {data} (set CRM_SAMPLE_DATA)")
    layout = yaml.safe_load((CONF_DIR / "datasets" / "loghub.yaml").read_text())["layouts"]["OpenSSH"]
    lines = data.read_text(encoding="utf-8").splitlines()[:600]
    in_one_go = [m.template_id for m in map(LogTemplates(layout).mine, lines)]
    state, restarted = tmp_path / "templates.json", []
    for start in range(0, len(lines), 150):  # a new miner (a restarted job) every 150 lines
        miner = LogTemplates(layout, state=state)
        restarted += [miner.mine(line).template_id for line in lines[start : start + 150]]
        miner.save()
    assert restarted == in_one_go
    assert len(set(in_one_go)) > 10  # real variety, not one catch-all template


def test_forgetting_words_removes_them_from_templates_and_the_tree_and_keeps_ids(tmp_path):
    from pipelines.crom.logs import forget_in_templates

    state = tmp_path / "templates.json"
    miner = LogTemplates(state=state)
    first = miner.mine("session opened for alice by root")
    other = miner.mine("disk full on sda")
    miner.save()
    assert "alice" in first.template
    assert forget_in_templates(state, {"alice"}) == 1
    again = LogTemplates(state=state)
    templates = {c.cluster_id: " ".join(c.log_template_tokens) for c in again.miner.drain.clusters}
    assert templates[first.template_id] == "session opened for <*> by root" and "alice" not in str(templates)
    assert again.mine("session opened for bob by root").template_id == first.template_id  # still found through the tree
    assert again.mine("disk full on sda").template_id == other.template_id
