"""The embedded broker's cluster id (pipelines.broker), without starting a broker."""

from __future__ import annotations

import uuid

from pipelines import broker


def test_cluster_id_never_starts_with_a_dash(monkeypatch):
    # 0xF8 encodes to '-' first in URL-safe base64: Kafka's storage tool would take it for an option.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))
    cluster_id = broker._cluster_id()
    assert cluster_id == "A" * 22 and len(cluster_id) == 22


def test_cluster_ids_are_random_and_22_characters():
    ids = {broker._cluster_id() for _ in range(200)}
    assert len(ids) == 200 and all(len(i) == 22 and not i.startswith("-") for i in ids)
