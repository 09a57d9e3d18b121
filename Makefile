# Everything a fresh machine needs is installed by these targets: the virtualenv and Python
# packages (PyPI), the Kafka broker jars and the Spark packages (Maven Central).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CACHED := .cache/.setup-done

.PHONY: setup demo cdnow test unit bench eval clean tools dist airflow

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# Java 17 runs Kafka and Spark; Maven fetches the broker jars. Installed from Debian if missing.
tools:
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  echo "installing Java 17 and Maven from Debian"; \
	  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null; }

$(CACHED): $(INSTALLED) conf/broker/pom.xml conf/local.yaml | tools
	$(BIN)/crm setup
	touch $@

setup: $(CACHED)

demo: setup
	$(BIN)/crm demo

# CDNOW's real purchases through CROM, CRFM and CRSM (conf/cdnow.yaml, directives/cdnow):
# BG/NBD and Gamma-Gamma fitted from the raw purchases, with the holdout check.
cdnow: setup
	$(BIN)/crm demo --conf cdnow --replay cdnow-sample

# The project as one zip for spark-submit --py-files: what executors import (see jobs/*.py).
dist: $(INSTALLED)
	$(BIN)/python -m pipelines.dist dist/pipelines.zip

# Apache Airflow in a virtualenv of its own, for jobs/airflow_dag.py (it never imports our code).
AIRFLOW := .venv-airflow/.installed
$(AIRFLOW):
	$(PYTHON) -m venv .venv-airflow
	.venv-airflow/bin/pip install --quiet --upgrade pip
	.venv-airflow/bin/pip install --quiet "apache-airflow==3.3.2"
	touch $@

airflow: $(AIRFLOW)

test: setup $(AIRFLOW)
	$(BIN)/pytest

unit: $(INSTALLED)
	$(BIN)/pytest -m "not integration"

# Results go to bench-results.json and .md, and the latest full run into docs/benchmarks.md.
bench: setup
	$(BIN)/python -m tests.bench.run
	$(BIN)/python -m tests.bench.publish

# Datafication quality on the public data sets in ../shared/data (CRM_SAMPLE_DATA).
eval: $(INSTALLED)
	$(BIN)/python -m tests.eval.run

clean:
	-$(BIN)/crm broker stop
	-$(BIN)/crm broker stop --conf secure
	rm -rf dist .lakehouse .checkpoints .lakehouse-cdnow .checkpoints-cdnow .broker .lakehouse-secure .checkpoints-secure .broker-secure bench-results.json bench-results.md eval-results.json eval-top-pages.json
