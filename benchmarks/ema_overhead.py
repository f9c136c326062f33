"""Per-step overhead of ``lightning_tricks.callbacks.EMA`` vs Lightning's ``EMAWeightAveraging`` vs no averaging.

Two measurements, each side by side in one process with interleaved repeats and medians:

1. ``update``: the averaging update alone (our foreach ``_update`` vs ``AveragedModel.update_parameters`` with
   Lightning's per-tensor ``avg_fn``), per call.
2. ``step``: a real ``Trainer.fit`` of ``--steps`` steps per variant, timed from the first to the last training batch
   (setup excluded), per step.

Models: a small MLP (32-64-64-10) and a moderately big one (8 layers of 1024, ~8M parameters, 18 tensors).
Prints one JSON object and a table of ratios. Run: ``python benchmarks/ema_overhead.py`` (about 2 minutes on a
2-core CPU VM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

import torch
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
    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == 1:  # skip the first step (allocations, warm-up)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.end, self.steps = time.perf_counter(), trainer.global_step - 1


def make_callback(variant: str) -> list[Callback]:
    if variant == "ours":
        return [EMA(decay=0.999)]
    if variant == "lightning":
        return [EMAWeightAveraging(decay=0.999)]
    return []


def time_fit(spec: dict[str, int], variant: str, steps: int) -> float:
    torch.manual_seed(0)
    model = MLP(**spec)
    data = TensorDataset(torch.randn(steps * 32, model.n_in), torch.randint(0, 10, (steps * 32,)))
    timer = StepTimer()
    trainer = Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[*make_callback(variant), timer],
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=32))
    return (timer.end - timer.start) / timer.steps


def time_update(spec: dict[str, int], variant: str, calls: int) -> float:
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
    start = time.perf_counter()
    for _ in range(calls):
        update()
    return (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats}
    for name, spec in MODELS.items():
        params = sum(p.numel() for p in MLP(**spec).parameters())
        samples: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved: every variant once per repeat
            for variant in ("ours", "lightning"):
                samples.setdefault(f"update_{variant}", []).append(time_update(spec, variant, args.calls))
            for variant in ("none", "ours", "lightning"):
                samples.setdefault(f"step_{variant}", []).append(time_fit(spec, variant, args.steps))
        medians = {key: statistics.median(values) for key, values in samples.items()}
        results[name] = {
            "parameters": params,
            "median_seconds": medians,
            "update_lightning_over_ours": medians["update_lightning"] / medians["update_ours"],
            "step_ours_over_none": medians["step_ours"] / medians["step_none"],
            "step_lightning_over_none": medians["step_lightning"] / medians["step_none"],
            "step_lightning_over_ours": medians["step_lightning"] / medians["step_ours"],
        }
    print(json.dumps(results, indent=2))
    print(f"\n{'model':<10} {'params':>10} {'update ours':>12} {'update PL':>10} {'PL/ours':>8} "
          f"{'step none':>10} {'ours/none':>10} {'PL/none':>8}")  # fmt: skip
    for name in MODELS:
        r, m = results[name], results[name]["median_seconds"]
        print(
            f"{name:<10} {r['parameters']:>10} {m['update_ours'] * 1e3:>10.3f}ms {m['update_lightning'] * 1e3:>8.3f}ms "
            f"{r['update_lightning_over_ours']:>8.2f} {m['step_none'] * 1e3:>8.2f}ms {r['step_ours_over_none']:>10.3f} "
            f"{r['step_lightning_over_none']:>8.3f}"
        )
    return results


if __name__ == "__main__":
    main()
