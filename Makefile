# reftlab: make help lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: help install train sweep data report test test-fast bench lint format ui mlflow-server mlflow-server-auth clean clean-server

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv from requirements/ (CPU torch from the local wheel first)

$(VENV)/.installed: requirements/base.txt requirements/nodeps.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements/base.txt
	$(PY) -m pip install -q --no-deps -r requirements/nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

train: install ## the main job on the embedded default (SmolLM2-135M, opinion spam); ARGS="key=value ..."
	$(PY) train.py $(ARGS)

sweep: install ## a layer sweep (multirun/): ARGS overrides, e.g. ARGS="data.max_train=200"
	$(PY) train.py -m intervention.layer=8,16,24 $(ARGS)

data: install ## prepare a dataset into its Oxen repository data/repos/<name>: ARGS="data=persuasion_sample"
	$(PY) -m reftlab.data.cli prepare $(ARGS)

report: install ## comparison report of an experiment's runs: ARGS="--experiment reft_vs_lora"
	$(PY) report.py $(ARGS)

bench: install ## training speed: stock pyreft vs cached prefix vs one forward pass (about 25 min here); ARGS="--examples 64"
	$(PY) benchmarks/train_speed.py $(ARGS)

TEST_WORKERS ?= 2
test: install ## the whole suite on tiny models and the shipped data, in TEST_WORKERS=2 processes (see README for its time)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-fast: install ## the unit tests, in one process (skips what is marked slow: whole jobs, sweeps, servers, the bundled model)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install ## ruff fix and format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

ui: install ## MLflow UI on the local database (http://127.0.0.1:5000); prints each experiment's runs-table link
	@$(PY) -c "from reftlab import tracking; tracking.print_ui_links()"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

MLFLOW_PORT ?= 5001
MLFLOW_HOST ?= 127.0.0.1
# The store URI reaches mlflow through the environment (mlflow reads MLFLOW_BACKEND_STORE_URI), never a
# command line, so a password in a PostgreSQL URI does not show in `ps`: export it, do not pass it to make.
mlflow-server: export MLFLOW_BACKEND_STORE_URI ?= sqlite:///$(CURDIR)/mlflow-server.db
mlflow-server: install ## team tracking server on 127.0.0.1:5001 (MLFLOW_PORT; SQLite, or PostgreSQL via MLFLOW_BACKEND_STORE_URI), proxied artifacts
	$(VENV)/bin/mlflow server --serve-artifacts --artifacts-destination "$(CURDIR)/mlartifacts" \
		--host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

mlflow-server-auth: export MLFLOW_BACKEND_STORE_URI ?= sqlite:///$(CURDIR)/mlflow-server.db
mlflow-server-auth: export MLFLOW_AUTH_CONFIG_PATH ?= $(CURDIR)/conf/mlflow/basic_auth.ini
mlflow-server-auth: install ## the team server with MLflow's basic-auth app (admin from MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD in the environment)
	@test -n "$$MLFLOW_AUTH_ADMIN_USERNAME" -a -n "$$MLFLOW_AUTH_ADMIN_PASSWORD" || \
		{ echo "export MLFLOW_AUTH_ADMIN_USERNAME and MLFLOW_AUTH_ADMIN_PASSWORD first (never on a command line)" >&2; exit 2; }
	export MLFLOW_FLASK_SERVER_SECRET_KEY="$${MLFLOW_FLASK_SERVER_SECRET_KEY:-$$(openssl rand -hex 32)}"; \
	$(VENV)/bin/mlflow server --app-name basic-auth --serve-artifacts --artifacts-destination "$(CURDIR)/mlartifacts" \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers 1

clean: ## remove run outputs, the local MLflow database and artifacts (keeps .venv, .cache, data/repos and the server's store)
	rm -rf outputs/* multirun/* mlruns mlflow.db .pytest_cache
	touch outputs/.gitkeep multirun/.gitkeep

clean-server: ## delete the team server's store (mlflow-server.db, mlartifacts/); refuses while the server answers
	@if curl -s -o /dev/null --max-time 2 http://127.0.0.1:$(MLFLOW_PORT)/health; then \
		echo "the MLflow server on port $(MLFLOW_PORT) is running: stop it first" >&2; exit 1; fi
	rm -rf mlflow-server.db mlflow-auth.db mlartifacts
