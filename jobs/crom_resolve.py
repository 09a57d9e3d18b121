"""CROM cross-batch step (operational layer): silver -> crom/identity_map and crom/web_sessions_*.

Run from the repository root after `make setup dist`, with the project's virtualenv active, after
the ingest job:

    spark-submit \
      --packages io.delta:delta-spark_4.1_2.13:4.4.0,org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.1 \
      --py-files dist/pipelines.zip \
      jobs/crom_resolve.py [--conf local]

Options are those of `crm resolve --help`; the exit code is 0 on success and non-zero with a
one-line reason on failure, for cron and Airflow.
"""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["resolve", *sys.argv[1:]]))
