"""Per-step overhead of ``lightning_tricks.callbacks.EMA`` vs Lightning's ``EMAWeightAveraging`` vs no averaging.

Two measurements, each side by side in one process, interleaved (every variant once per round, the order rotating
each round, ``_timing.interleave``), summarized by medians; one torch thread and the process CPU time by default
(``--threads``, ``--clock``):

1. ``update``: the averaging update alone (our foreach ``_update`` vs ``AveragedModel.update_parameters`` with
   Lightning's per-tensor ``avg_fn``), per call.
2. ``step``: a real ``Trainer.fit`` of ``--steps`` steps per variant, timed from the first to the last training batch
   (setup excluded), per step. Beside each ratio: its noise floor, the same ratio for a do-nothing callback; a
   ratio below ``1 - noise`` is flagged implausible (and warned about).

Models: a small MLP (32-64-64-10) and a moderately big one (8 layers of 1024, ~8M parameters, 18 tensors).
Prints one JSON line and a markdown table. Run: ``python benchmarks/ema_overhead.py`` (about 2 minutes on a
2-core CPU VM).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from _timing import (
    NULL,
    DoNothing,
    add_threads_option,
    apply_threads,
    device_settings,
    interleave,
    make_clock,
    markdown_table,
    noise_floor,
    quiet_lightning,
    ratio_cell,
    verdict,
    warn,
)
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.callbacks import EMA


class MLP(LightningModule):
    def __init__(self, width: int, depth: int, n_in: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))
        self.n_in = n_in

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


MODELS = {"small_mlp": {"width": 64, "depth": 2}, "big_mlp": {"width": 1024, "depth": 8}}


class StepTimer(Callback):
    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == 1:  # skip the first step (allocations, warm-up)
            self.start = self.now()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.end, self.steps = self.now(), trainer.global_step - 1


def make_callback(variant: str) -> list[Callback]:
    if variant == "ours":
        return [EMA(decay=0.999)]
    if variant == "lightning":
        return [EMAWeightAveraging(decay=0.999)]
    if variant == NULL:
        return [DoNothing()]
    return []


def time_fit(spec: dict[str, int], variant: str, steps: int, now: Callable[[], float]) -> float:
    torch.manual_seed(0)
    model = MLP(**spec)
    data = TensorDataset(torch.randn(steps * 32, model.n_in), torch.randint(0, 10, (steps * 32,)))
    timer = StepTimer(now)
    trainer = Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[*make_callback(variant), timer],
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=32))
    return (timer.end - timer.start) / timer.steps


def time_update(spec: dict[str, int], variant: str, calls: int, now: Callable[[], float]) -> float:
    torch.manual_seed(0)
    model = MLP(**spec)
    callback = make_callback(variant)[0]
    trainer = SimpleNamespace(strategy=None, precision="32-true")  # setup reads only these (and the module)
    callback.setup(trainer, model, "fit")  # type: ignore[arg-type]
    update = (
        (lambda: callback._update(model))
        if variant == "ours"
        else (lambda: callback._average_model.update_parameters(model))
    )
    for _ in range(3):
        update()
    start = now()
    for _ in range(calls):
        update()
    return (now() - start) / calls


STEP_VARIANTS = ("none", NULL, "ours", "lightning")


def measure(spec: dict[str, int], repeats: int, steps: int, calls: int, now: Callable[[], float]) -> dict[str, Any]:
    """Every variant once per round, the order rotating; medians, ratios, the noise floor and the verdicts."""

    def run(name: str, round_: int) -> float:
        kind, _, variant = name.partition("_")
        return time_update(spec, variant, calls, now) if kind == "update" else time_fit(spec, variant, steps, now)

    names = [*(f"update_{v}" for v in ("ours", "lightning")), *(f"step_{v}" for v in STEP_VARIANTS)]
    samples = interleave(names, repeats, run)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    null_ratio = medians[f"step_{NULL}"] / medians["step_none"]
    noise = noise_floor(samples["step_none"], samples[f"step_{NULL}"], null_ratio)
    result: dict[str, Any] = {
        "parameters": sum(p.numel() for p in MLP(**spec).parameters()),
        "median_seconds": medians,
        "update_lightning_over_ours": medians["update_lightning"] / medians["update_ours"],
        "step_noise": noise,
        "step_nothing_over_none": null_ratio,
        "warnings": [],
    }
    for variant in ("ours", "lightning"):
        ratio = medians[f"step_{variant}"] / medians["step_none"]
        text, warning = verdict(ratio, noise)
        result[f"step_{variant}_over_none"] = ratio
        result[f"step_{variant}_verdict"] = text
        if warning:
            result["warnings"].append(f"step {variant}: {warning}")
            warn(f"EMA step {variant}: {warning}")
    result["step_lightning_over_ours"] = medians["step_lightning"] / medians["step_ours"]
    return result


def render(payload: dict[str, Any]) -> str:
    """The markdown table of a run's JSON (``tables.py`` regenerates the README's tables with it)."""
    header = ["model", "parameters", "update, ours", "update, Lightning", "Lightning / ours", "step, none",
              "ours / none ± noise", "Lightning / none ± noise"]  # fmt: skip
    rows = []
    for name in MODELS:
        r = payload[name]
        m = r["median_seconds"]
        cells = [
            ratio_cell(r[f"step_{v}_over_none"], r["step_noise"])
            + (" (implausible)" if r[f"step_{v}_verdict"] == "implausible" else "")
            for v in ("ours", "lightning")
        ]
        rows.append([name, r["parameters"], f"{m['update_ours'] * 1e3:.3f} ms", f"{m['update_lightning'] * 1e3:.3f} ms",
                     f"{r['update_lightning_over_ours']:.2f}", f"{m['step_none'] * 1e3:.2f} ms", *cells])  # fmt: skip
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--clock", choices=("process", "wall"), default="process", help="CPU clock")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    quiet_lightning()
    now = make_clock(device_settings("cpu"), args.clock)
    results: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "clock": args.clock,
    }
    for name, spec in MODELS.items():
        results[name] = measure(spec, args.repeats, args.steps, args.calls, now)
    print(json.dumps(results))
    print()
    print(render(results))
    return results


if __name__ == "__main__":
    main()
