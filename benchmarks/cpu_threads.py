"""How many CPU threads should ``lightning-tricks fit`` use? One thread, two, or two with passive OpenMP waiting.

Runs the CLI on a config (by default ``make train``'s and the MLP recipe's) in fresh subprocesses, one per variant and
round, interleaved with the order rotating each round (so the neighbours' load hits every variant alike), and reads
the training-step time off the TensorBoard event times of the run (``train/loss_step`` logged every ``--log-every``
steps: start-up, data loading and the test pass are left out). Each row also gives the 1-minute load average
(``os.getloadavg``) when the run started, since on a shared machine the answer depends on it.

The variants set the environment before torch starts, as a user would: ``OMP_NUM_THREADS=1``; ``OMP_NUM_THREADS=2``;
``OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning; libgomp reads the
variable once, at load). What it measures informs :func:`lightning_tricks._threads.default_threads`.

Usage: ``python benchmarks/cpu_threads.py [--configs examples/configs/small_resnet.yaml ...] [--steps 60]
[--rounds 3] [--save]`` (``--save``: ``benchmarks/results/cpu_threads.json`` for ``tables.py``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _timing
import tables

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, str]] = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "2 threads, passive wait": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
}
CONFIGS = ["examples/configs/small_resnet.yaml", "examples/configs/mlp.yaml"]


def step_seconds(log_dir: Path, key: str = "train/loss_step") -> float:
    """Median seconds per optimizer step between consecutive ``key`` events of the one run under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = {path.parent for path in log_dir.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    scalars = events.Scalars(key)
    if len(scalars) < 2:
        raise RuntimeError(f"{run}: fewer than two {key!r} events; raise --steps or lower --log-every")
    rates = [(b.wall_time - a.wall_time) / (b.step - a.step) for a, b in itertools.pairwise(scalars)]
    return statistics.median(rates)


def run_once(config: str, env_vars: dict[str, str], steps: int, log_every: int) -> tuple[float, float]:
    """One short ``fit`` of ``config`` in a subprocess with ``env_vars``: (seconds per step, load average at start)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env.update(env_vars)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "lightning_tricks.cli", "fit", "--config", config,
                   "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(steps),
                   "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", str(log_every),
                   "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
                   "--trainer.logger.init_args.save_dir", tmp]  # fmt: skip
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        return step_seconds(Path(tmp)), load


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="CLI configs to time")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--log-every", type=int, default=10, help="steps between the timed events")
    parser.add_argument("--rounds", type=int, default=3, help="every variant once per round, the order rotating")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/cpu_threads.json")
    args = parser.parse_args(argv)
    started = _timing.start()
    runs = {(config, variant): (config, env) for config in args.configs for variant, env in VARIANTS.items()}
    measured = _timing.interleave(list(runs), args.rounds, lambda key, r: run_once(*runs[key], args.steps,
                                                                                    args.log_every))  # fmt: skip
    results = [
        {
            "config": Path(config).name,
            "variant": variant,
            "ms_per_step": [1e3 * s for s, _ in rounds],
            "load_average": [load for _, load in rounds],
        }
        for (config, variant), rounds in measured.items()
    ]
    payload = {"steps": args.steps, "rounds": args.rounds, "results": results}
    record = _timing.finish("cpu_threads", ["cpu_threads.py", *argv], payload, started, args.save)
    print(tables.render(record))
    return record


if __name__ == "__main__":
    main()
