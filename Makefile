# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - create .venv if missing, install, run the daily pipeline on the embedded default
#   make test   - same install, run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adsrec-installed

.PHONY: demo test test-slow install clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the tests marked slow (whole daily flows killed at fault points: docs/reliability.md), outside make test
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf .adsrec
