# One virtual environment for development; the two distributions install and test on their own.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export MPLBACKEND := Agg

.PHONY: setup demo test test-mcushard test-sharprl test-slow bench lint clean

setup: $(STAMP)

$(STAMP): mcushard/pyproject.toml sharprl/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e 'mcushard[test,hf]' -e 'sharprl[test]' ruff
	touch $(STAMP)

demo: setup
	$(BIN)/python -m mcushard.demo
	$(BIN)/python -m sharprl.demo

test: setup test-mcushard test-sharprl

test-mcushard: setup
	cd mcushard && ../$(BIN)/pytest -q

test-sharprl: setup
	cd sharprl && ../$(BIN)/pytest -q

test-slow: setup
	cd sharprl && ../$(BIN)/pytest -q -m slow

bench: setup
	@for f in mcushard/benchmarks/*.py sharprl/benchmarks/*.py; do \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done

lint: setup
	$(BIN)/ruff check mcushard sharprl

clean:
	rm -rf $(VENV)
