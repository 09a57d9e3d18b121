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


def _profile_in(tmp_path: Path, monkeypatch, name: str, text: str) -> None:
    (tmp_path / "local.yaml").write_text((config.CONF_DIR / "local.yaml").read_text())
    (tmp_path / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(config, "CONF_DIR", tmp_path)


def test_a_relative_path_out_of_the_repository_is_refused(tmp_path: Path, monkeypatch):
    _profile_in(tmp_path, monkeypatch, "escape", "extends: local\ndirectives: ../../etc\n")
    with pytest.raises(CrmError, match=r"escape.yaml: directives .*leads outside"):
        config.load_profile("escape")
    _profile_in(tmp_path, monkeypatch, "elsewhere", f"extends: local\ndirectives: {tmp_path}\n")
    assert config.load_profile("elsewhere").directives == tmp_path.resolve()  # an absolute path is the operator's choice


def test_a_password_in_a_profile_is_refused(tmp_path: Path, monkeypatch):
    _profile_in(tmp_path, monkeypatch, "leaky", "extends: local\nkafka:\n  password: hunter2\n")
    with pytest.raises(CrmError, match="never goes in a profile; set CRM_KAFKA_PASSWORD"):
        config.load_profile("leaky")


def test_the_secure_profile_takes_its_secrets_from_the_environment_and_never_shows_them(monkeypatch):
    monkeypatch.delenv("CRM_KAFKA_PASSWORD", raising=False)
    kafka = config.load_profile("secure").kafka
    with pytest.raises(CrmError, match=r"needs a password \(CRM_KAFKA_PASSWORD\)"):
        kafka.client_options()
    monkeypatch.setenv("CRM_KAFKA_PASSWORD", 'canary"\\pw')
    monkeypatch.setenv("CRM_KAFKA_USERNAME", "analyst")
    profile = config.load_profile("secure")
    assert profile.kafka.client_options()["sasl_plain_password"] == 'canary"\\pw'
    jaas = profile.kafka.spark_options()["kafka.sasl.jaas.config"]
    assert jaas.endswith('username="analyst" password="canary\\"\\\\pw";')  # quoted for JAAS
    assert "canary" not in repr(profile) and "canary" not in str(profile)
    assert "canary" not in repr(profile.kafka.client_options())  # kafka-python's admin client logs its settings at DEBUG


def test_a_profile_that_links_out_of_conf_is_refused(tmp_path: Path, monkeypatch):
    conf, outside = tmp_path / "conf", tmp_path / "outside.yaml"
    conf.mkdir()
    outside.write_text("extends: local\n")
    (conf / "local.yaml").write_text((config.CONF_DIR / "local.yaml").read_text())
    (conf / "linked.yaml").symlink_to(outside)
    monkeypatch.setattr(config, "CONF_DIR", conf)
    with pytest.raises(CrmError, match=r"^profile: linked.yaml -> .*outside.yaml leads outside .*conf; refused$"):
        config.load_profile("linked")
    assert config.load_profile("local").name == "local"  # a plain file in conf/ loads
