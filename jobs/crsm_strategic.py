"""CRSM (strategic layer): functional parameters -> KPIs against their targets.

Run from the repository root after `make setup dist`, with the project's virtualenv active:

    spark-submit \
      --packages io.delta:delta-spark_4.1_2.13:4.4.0,org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.1 \
      --py-files dist/pipelines.zip \
      jobs/crsm_strategic.py [--conf local]

Options are those of `crm strategic --help`; the exit code is 0 on success and non-zero with a
one-line reason on failure, for cron and Airflow.
"""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["strategic", *sys.argv[1:]]))
