# Vigil — `make help` lists every target. `make demo` and `make test` bootstrap the venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9
export PYTHONDONTWRITEBYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help setup lock up down status simulate ingest etl features train promote rollback models \
        serve score package drift retrain-if-needed triggers eda airflow demo demo-drift demo-airflow \
        spark-cluster spark-cluster-stop \
        test test-fast test-integration \
        lint format bench mlflow-ui schemas clean

help: ## List every target
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP) ## Create the virtualenv and install the lock (re-runs only when the lock changes)
	@# A venv synced by hand (`uv pip sync` removes what the lock does not list) loses the
	@# project's editable install: Airflow's DAGs then cannot import it. Put it back.
	@$(BIN)/python -I -c 'import ops' 2>/dev/null \
	  || $(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .

lock: ## Re-resolve requirements.in into requirements.lock, then the stream image's subset
	@test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q "uv==$(UV_VERSION)"; }
	$(BIN)/uv pip compile -q requirements.in --python-version 3.11 -o requirements.lock
	$(MAKE) setup
	$(BIN)/python -m ops.images

up: setup ## Start the embedded stack (Kafka API, PostgreSQL, MLflow) on loopback
	$(BIN)/python -m stack up

down: setup ## Stop the embedded stack (and a demo's BentoML service, make airflow, make spark-cluster); no process is left behind
	$(BIN)/python -m serving stop
	$(BIN)/python -m ops.airflowcli stop
	$(BIN)/python -m stack.sparkcluster stop
	$(BIN)/python -m stack down

spark-cluster: setup ## A Spark standalone master + workers on loopback (SPARK_WORKERS=2); prints the master URL
	$(BIN)/python -m stack.sparkcluster

spark-cluster-stop: setup ## Stop the cluster of make spark-cluster
	$(BIN)/python -m stack.sparkcluster stop

status: setup ## Show pid, address and health of each embedded service
	$(BIN)/python -m stack status

simulate: up ## Simulate a ward into Kafka (PATIENTS=, HOURS=, SEED=, SCENARIO=, MODE=live)
	$(BIN)/python -m pipelines.produce $(if $(PATIENTS),--patients $(PATIENTS)) \
	  $(if $(HOURS),--hours $(HOURS)) $(if $(SEED),--seed $(SEED)) \
	  $(if $(SCENARIO),--scenario $(SCENARIO)) $(if $(MODE),--mode $(MODE)) \
	  $(if $(SPEEDUP),--speedup $(SPEEDUP))

ingest: up ## Land Kafka into the raw lake (bounded drain; CONTINUOUS=1 to keep running)
	$(BIN)/python -m pipelines.landing $(if $(CONTINUOUS),--continuous)

etl: up ## Validate, clean and resample new raw partitions (PARTITION=date=…/hour=… FORCE=1)
	$(BIN)/python -m pipelines.etl $(if $(PARTITION),--partition $(PARTITION)) $(if $(FORCE),--force)

features: up ## Features + labels for new processed hours → lake + PostgreSQL (FORCE=1 recomputes all)
	$(BIN)/python -m pipelines.features $(if $(FORCE),--force)

train: up ## Optuna-tune every family on the lake's features, register the best as @challenger
	$(BIN)/python -m training train

promote: up ## Gate @challenger vs @champion and NEWS2 (patient bootstrap); promote if it passes
	$(BIN)/python -m training promote

rollback: up ## Move @champion back to the previous champion
	$(BIN)/python -m training rollback

models: up ## List registered model versions with aliases, gate verdicts and promotions
	$(BIN)/python -m training history

serve: up ## Serve @champion with BentoML on loopback (OpenAPI at /docs.json); Ctrl-C stops it
	$(BIN)/python -m serving serve

score: up ## Score vitals.raw with the served model → predictions/alerts (BOUNDED=1 stops when idle, WORKERS=N processes)
	$(BIN)/python -m serving score $(if $(BOUNDED),--bounded) $(if $(WORKERS),--workers $(WORKERS))

package: up ## Build a versioned Bento of the service with the champion model inside
	$(BIN)/python -m serving package

drift: up ## Evidently drift + realized performance of @champion on the last window → reports/monitoring (UNTIL=)
	$(BIN)/python -m monitoring drift $(if $(UNTIL),--until $(UNTIL))

retrain-if-needed: up ## Monitoring; on a trigger retrain on the sliding window, gate, promote (service hot-swaps)
	$(BIN)/python -m ops retrain-if-needed $(if $(UNTIL),--until $(UNTIL))

triggers: up ## Recent retraining triggers and what became of them
	$(BIN)/python -m monitoring triggers

eda: up ## EDA report (matplotlib/seaborn) from the lake → reports/eda/<time>/report.html, logged to MLflow
	$(BIN)/python -m pipelines.eda.report

airflow: up ## Airflow standalone on 127.0.0.1:8080 (AIRFLOW_PORT=…; new DAGs paused unless AIRFLOW_UNPAUSED=1); Ctrl-C stops it
	$(BIN)/python -m ops.airflowcli

demo: setup ## The main job end to end: ward → Kafka → lake → ETL → features → training → live scoring
	$(BIN)/python -m demo $(if $(PATIENTS),--patients $(PATIENTS)) \
	  $(if $(HOURS),--hours $(HOURS)) $(if $(SEED),--seed $(SEED)) \
	  $(if $(LIVE_SECONDS),--live-seconds $(LIVE_SECONDS))

demo-drift: setup ## The closed loop: baseline champion → virus wave → drift named → retrain → better champion
	$(BIN)/python -m demo.drift

demo-airflow: setup ## The main job through Airflow: ingest → ETL → features → training → deployment DAG runs
	$(BIN)/python -m demo.airflow $(if $(PATIENTS),--patients $(PATIENTS)) $(if $(HOURS),--hours $(HOURS))

test: setup ## Run every test (unit, integration on the real embedded stack, e2e), two workers
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-fast: setup ## Unit tests only: no servers, about a minute
	$(BIN)/pytest -q -m "not integration and not e2e and not slow"

test-integration: setup ## Integration and e2e tests only
	$(BIN)/pytest -q -m "integration or e2e"

lint: setup ## Ruff lint + format check, mypy (strict), import-linter layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## Run every benchmark; results in bench/results/*.json (takes ~1 h)
	$(BIN)/python -m bench.bench_ingest
	$(BIN)/python -m bench.bench_etl
	$(BIN)/python -m bench.bench_features
	$(BIN)/python -m bench.bench_training
	$(BIN)/python -m bench.bench_serving
	$(BIN)/python -m bench.bench_drift
	$(BIN)/python -m bench.bench_retrain
	$(BIN)/python -m bench.bench_chaos
	$(BIN)/python -m bench.bench_scale --part landing
	$(BIN)/python -m bench.bench_scale --part spark
	$(BIN)/python -m bench.report

mlflow-ui: up ## Print the MLflow UI address (the server runs with `make up`)
	@$(BIN)/python -c 'from stack.localstack import endpoints; from stack.settings import load_settings; print(endpoints(load_settings()).mlflow_uri)'

schemas: setup ## Print the JSON Schema of every message contract
	$(BIN)/python -m stack.contracts

clean: down ## Stop the stack and delete run-time data (lake, run dir, mlruns)
	rm -rf .vigil data reports
	find mlruns -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
