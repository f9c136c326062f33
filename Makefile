# The README's two commands: `make train` and `make test`. Both set up .venv first (scripts/setup.sh).
.PHONY: setup train test lint

setup:
	bash scripts/setup.sh

train: setup
	.venv/bin/lightning-tricks fit --config examples/configs/mlp.yaml

test: setup
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
