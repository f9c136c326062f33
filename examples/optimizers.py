"""Optimizers: plain SGD, momentum (Polyak, 1964), Nesterov (Sutskever et al., ICML 2013), Adagrad (Duchi et al.,
JMLR 2011), RMSprop (Hinton, 2012) and Adam (Kingma & Ba, ICLR 2015) at their usual learning rates.

What it shows: the same MLP (two hidden layers, 512 and 256 ReLU units) trained from the same initial weights (same
seed) by ``Classifier(optimizer=...)`` with each optimizer at a learning rate commonly used for it, not tuned here:
SGD 0.1; momentum and Nesterov 0.01 with momentum 0.9 (the same effective step, 0.01 / (1 - 0.9) = 0.1); Adagrad
0.01; RMSprop 0.001 without momentum; Adam 0.001. The claim to check: momentum and the adaptive methods reach a
lower training loss and a good accuracy in fewer epochs than plain SGD. The tables give the usual results, the
training loss and the validation accuracy by epoch; the curves are in TensorBoard: ``tensorboard --logdir
logs/optimizers``.

Hardware: 2-core CPU VM (AMD EPYC, shared with other jobs), no GPU.
Runtime: 111 s with the defaults (6 runs of 10 epochs on 10000 images), 2026-11-25, machine under load.
Result: one seed. Adam reached the lowest training loss at every epoch (0.79 after epoch 1, 0.27 after
10) and the best test accuracy (0.850); Adagrad and RMSprop were next in training loss (0.29) but less accurate
(0.81 / 0.80, noisier validation curves); momentum (0.842) and Nesterov (0.815) beat plain SGD (0.742, whose
validation accuracy jumped between 0.64 and 0.80). Reproduced: adaptive methods train fastest, momentum beats plain
SGD; the ranking among the others is within one seed's noise. See examples/RESULTS.md.

Run: ``python examples/optimizers.py`` (``--optimizers sgd adam``, ``--epochs``, ``--seeds 0 1 2``, ...).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from _common import Result, Variant, parse_args, report, results_and_curves
from _common import run_experiment as run

from lightning_tricks.models import MLPClassifier

EXPERIMENT = "optimizers"
#: Optimizer name -> ``Classifier`` options (a usual learning rate for each, not tuned on this data).
SETTINGS: dict[str, dict[str, Any]] = {
    "sgd": {"optimizer": "sgd", "lr": 0.1},
    "momentum": {"optimizer": "momentum", "lr": 0.01, "momentum": 0.9},
    "nesterov": {"optimizer": "nesterov", "lr": 0.01, "momentum": 0.9},
    "adagrad": {"optimizer": "adagrad", "lr": 0.01},
    "rmsprop": {"optimizer": "rmsprop", "lr": 0.001, "momentum": 0.0},
    "adam": {"optimizer": "adam", "lr": 0.001},
}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimizers", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 256], help="hidden layer widths")


def main(argv: Sequence[str] | None = None) -> list[Result]:
    started = time.perf_counter()
    args = parse_args(__doc__, argv, epochs=10, train_subset=10000, add_arguments=_arguments)
    variants = [
        Variant(
            name=name,
            model=lambda name=name: MLPClassifier(hidden_sizes=args.hidden, **SETTINGS[name]),
            settings={"hidden_sizes": args.hidden, **SETTINGS[name]},
        )
        for name in args.optimizers
    ]
    results = run(EXPERIMENT, variants, args)
    table = results_and_curves(results, "train/loss_epoch", "val/acc")
    report(EXPERIMENT, table, args, started)
    return results


if __name__ == "__main__":
    main()
