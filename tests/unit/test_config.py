"""Profiles: conf/<name>.yaml, optionally on top of the profile it extends."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import config
from pipelines.errors import CrmError


def test_a_profile_extends_another_key_by_key():
    local, cdnow = config.load_profile("local"), config.load_profile("cdnow")
    assert cdnow.lakehouse.name == ".lakehouse-cdnow" and cdnow.directives == local.directives / "cdnow"
    assert cdnow.spark == local.spark and cdnow.broker == local.broker and cdnow.ingest == local.ingest


def test_nested_settings_are_merged_not_replaced(tmp_path: Path, monkeypatch):
    (tmp_path / "local.yaml").write_text((config.CONF_DIR / "local.yaml").read_text())
    (tmp_path / "small.yaml").write_text("extends: local\nspark:\n  conf:\n    spark.sql.shuffle.partitions: '1'\n")
    monkeypatch.setattr(config, "CONF_DIR", tmp_path)
    small, local = config.load_profile("small"), config.load_profile("local")
    assert small.spark.conf["spark.sql.shuffle.partitions"] == "1"
    assert small.spark.master == local.spark.master and small.spark.conf["spark.driver.memory"] == local.spark.conf["spark.driver.memory"]


def test_profiles_extending_each_other_in_a_loop_are_refused(tmp_path: Path, monkeypatch):
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    monkeypatch.setattr(config, "CONF_DIR", tmp_path)
    with pytest.raises(CrmError, match="profiles extend each other in a loop: a -> b -> a"):
        config.load_profile("a")
