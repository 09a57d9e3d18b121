"""Small builders the tests share."""

from __future__ import annotations

import os
import sys


def transaction_param(name: str, measure: str, **more) -> dict:
    """A functional parameter over the transaction source, as a directive's YAML gives it."""
    return {"name": name, "class": "transactional", "source": "transaction", "measure": measure, **more}


def crm_env(profile, **extra: str) -> dict[str, str]:
    """The environment that points a `crm` or spark-submit process at the profile's lakehouse,
    checkpoints and broker, with this virtualenv's Python for Spark's workers."""
    return {
        **os.environ,
        "CRM_LAKEHOUSE": str(profile.lakehouse),
        "CRM_CHECKPOINTS": str(profile.checkpoints),
        "CRM_KAFKA_BOOTSTRAP": profile.kafka.bootstrap_servers,
        "PYSPARK_PYTHON": sys.executable,
        **extra,
    }
