# The README's two commands: `make train` and `make test`. Both set up .venv first (scripts/setup.sh).
.PHONY: setup train test lint gpu-check bench

setup:
	bash scripts/setup.sh

train: setup
	.venv/bin/lightning-tricks fit --config examples/configs/small_resnet.yaml

test: setup
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# On one H100/H200, ~8 min: GPU tests, Trainer vs plain loop, monitor overhead, time to accuracy, bf16, torch.compile.
gpu-check: setup
	.venv/bin/python benchmarks/gpu_check.py

# Every benchmark of docs/benchmarks.md that runs on a CPU (callback overhead, Trainer vs a hand-written loop), then
# the page, regenerated from their results (benchmarks/results/*.json).
bench: setup
	.venv/bin/python benchmarks/overhead.py --suite all --save
	.venv/bin/python benchmarks/trainer_vs_plain.py --save
	.venv/bin/python benchmarks/tables.py
