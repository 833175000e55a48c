# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - create .venv if missing, install, run the daily pipeline on the embedded default
#   make test   - same install, run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adsrec-installed

.PHONY: demo test test-slow install clean postgres postgres-stop test-postgres

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: it resolves to the local CPU wheel instead of a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adsrec demo

# Two pytest-xdist workers (one per core of the 2-core CI box), whole modules per worker (--dist loadscope: a
# module's fixtures are built once); measured 10 min 52 s against 18 min 25 s in one process. --durations: the
# slowest tests in every CI log, to keep the suite inside its 15 minutes.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15

# the tests marked slow (the tutorial run word for word), outside make test
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The team stack on a real Postgres (infra/README.md). postgres: install Postgres from the Debian packages when
# absent (apt-get, as root) and start a local cluster in .adsrec-pg/ with the databases prefect and mlflow.
postgres:
	infra/local-postgres.sh start

postgres-stop:
	infra/local-postgres.sh stop

# MLflow's Postgres driver: the `team` extra of pyproject.toml, the same pin as infra/Dockerfile's MLflow image
TEAM_STAMP := $(VENV)/.adsrec-team-installed
$(TEAM_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet "psycopg[binary]==3.3.9"
	@touch $@

# the Prefect server and MLflow on Postgres, flows through a process worker (tests/e2e/test_team_stack_postgres.py);
# the test starts and removes its own throwaway cluster, so only the packages must be there
test-postgres: $(TEAM_STAMP)
	infra/local-postgres.sh install
	$(BIN)/python -m pytest -q -m postgres

clean:
	rm -rf .adsrec
