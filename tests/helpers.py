"""Small builders the tests share."""

from __future__ import annotations


def transaction_param(name: str, measure: str, **more) -> dict:
    """A functional parameter over the transaction source, as a directive's YAML gives it."""
    return {"name": name, "class": "transactional", "source": "transaction", "measure": measure, **more}
