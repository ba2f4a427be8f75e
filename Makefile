# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-slow bench clean sample-data

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip<27"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,serve]"
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -n 2

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh $(DEMO_OUT)

sample-data: venv
	$(BIN)/coldrec synth --out sample_data --users 2000 --items 1000 --days 30 --exposures-per-day 6700 --seed 7

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
