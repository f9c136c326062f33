"""Weight initialization (Glorot & Bengio, AISTATS 2010; He et al., ICCV 2015; Saxe et al., ICLR 2014; Mishkin &
Matas, ICLR 2016): the activation scale through a deep MLP under each ``WeightInit`` scheme, and whether it trains.

What it shows: a 20-hidden-layer MLP (width 256, ReLU by default, no normalization) initialized by ``WeightInit``
with N(0, 1) (``standard_normal``), U(±1/sqrt(n_in)) (``uniform``, the scale of PyTorch's default), Xavier,
Kaiming, orthogonal and LSUV, then trained with SGD + momentum. ``ActivationStats`` logs the standard deviation of
every ``Linear`` layer's output on the first training batch (step 0, before any update); the script reads those
logged values back and prints them by depth. N(0, 1) multiplies the scale by about sqrt(n_in / 2) per layer (it blows
up), U(±1/sqrt(n_in)) and Xavier shrink it with ReLU (it vanishes), Kaiming, orthogonal-with-ReLU-gain and LSUV keep
it near 1. The second table says whether each variant then trains.

Hardware: 2-core CPU VM (AMD EPYC, shared with other jobs), no GPU.
Runtime: 97 s with the defaults (6 runs of 5 epochs on 5000 images), 2026-11-25, machine under load.
Result: at step 0 the output std of layer 20 was nan (overflow past 1e16 by layer 15) with N(0, 1),
1.9e-8 with U(±1/sqrt(n_in)), 1.6e-3 with Xavier, 1.4 with Kaiming, 0.99 with orthogonal (gain sqrt 2) and 1.0 with
LSUV. Only the three that keep the scale trained (test accuracy 0.77 / 0.76 / 0.74 after 5 epochs); N(0, 1) went to
NaN, U(±1/sqrt(n_in)) stayed at chance (0.10) and Xavier reached 0.23. Reproduced. See examples/RESULTS.md.

Run: ``python examples/initialization.py`` (``--activation tanh``, ``--depth``, ``--width``, ``--epochs``, ...).
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Sequence

from _common import DEFAULT_COLUMNS, Figure, Result, Variant, parse_args, report, results_table
from _common import run_experiment as run

from lightning_tricks.callbacks import ActivationStats, WeightInit
from lightning_tricks.models import MLPClassifier

EXPERIMENT = "initialization"
SCHEMES = ("standard_normal", "uniform", "xavier_normal", "kaiming_normal", "orthogonal", "lsuv")
_STD_KEY = re.compile(r"^activation/net\.(\d+) [^/]*/std$")  # "activation/net.3 ReLU/std": layer 3's std


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), help="WeightInit schemes compared")
    parser.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    parser.add_argument("--depth", type=int, default=20, help="number of hidden layers")
    parser.add_argument("--width", type=int, default=256, help="width of every hidden layer")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD + momentum learning rate")


def _stds_by_depth(result: Result) -> list[float]:
    """Std of each Linear layer's output at step 0, in depth order, read back from the logged values."""
    layers = []
    for key, points in result.history.items():
        match = _STD_KEY.match(key)
        if match and points:
            layers.append((int(match.group(1)), points[0][1]))
    return [std for _, std in sorted(layers)]


def main(argv: Sequence[str] | None = None) -> list[Result]:
    started = time.perf_counter()
    args = parse_args(__doc__, argv, epochs=5, train_subset=5000, add_arguments=_arguments)
    hidden = [args.width] * args.depth
    # ``orthogonal`` takes its scale from ``gain``: sqrt(2) for ReLU, 5/3 for tanh (torch.nn.init.calculate_gain).
    gain = math.sqrt(2.0) if args.activation == "relu" else 5.0 / 3.0

    def init_options(scheme: str) -> dict[str, object]:
        options: dict[str, object] = {"scheme": scheme, "nonlinearity": args.activation}
        if scheme == "orthogonal":
            options["gain"] = gain
        return options

    variants = [
        Variant(
            name=scheme,
            model=lambda: MLPClassifier(
                hidden_sizes=hidden, activation=args.activation, optimizer="momentum", lr=args.lr
            ),
            callbacks=lambda scheme=scheme: [
                WeightInit(**init_options(scheme)),
                # Every step, so that step 0 (the initial weights) is logged; only Linear outputs.
                ActivationStats(layer_types=["Linear"], log_every_n_steps=1),
            ],
            settings={
                "weight_init": init_options(scheme),
                "hidden_sizes": hidden,
                "activation": args.activation,
                "optimizer": "momentum",
                "lr": args.lr,
            },
        )
        for scheme in args.schemes
    ]
    shown = sorted({1, 2, *range(5, args.depth + 1, 5), args.depth, args.depth + 1})

    def after_run(result: Result) -> None:
        stds = _stds_by_depth(result)
        for layer in shown:
            result.extra[f"std_{layer}"] = stds[layer - 1] if layer <= len(stds) else math.nan

    results = run(EXPERIMENT, variants, args, after_run=after_run)
    depth_columns = [
        (f"layer {layer}" if layer <= args.depth else "logits", f"std_{layer}", "{:.2g}") for layer in shown
    ]
    table = (
        f"Std of each Linear layer's output on the first batch (step 0), {args.depth} x {args.width} "
        f"{args.activation} MLP:\n\n"
        + results_table(results, depth_columns)
        + f"\n\nTraining ({args.epochs} epochs, SGD + momentum 0.9, lr {args.lr:g}):\n\n"
        + results_table(results, DEFAULT_COLUMNS)
    )
    report(
        EXPERIMENT,
        table,
        args,
        started,
        figures=[Figure(EXPERIMENT, tags=("train/loss_epoch", "val/acc"), profile=_STD_KEY.pattern)],
    )
    return results


if __name__ == "__main__":
    main()
