"""Shared gradient statistics, computed once per step, and what a person sees of them (readable at any size).

One ``_foreach_norm`` over the gradients per optimizer step, whatever combination of ``GradientHealth``,
``WeightNormMonitor`` and ``GradientClipping`` is on; the same results as each callback alone; the total gradient norm
under one key from one owner; one merged custom-scalar layout per run (read back with TensorBoard's own
``EventAccumulator`` and through a real TensorBoard server); per-parameter tags named ``path Type(shape)``.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.models import SkippingBoringModel, TinyGAN
from helpers.tensorboard_server import tensorboard_server
from helpers.trainers import TRAIN_ONLY_ON_CPU, csv_fit, tiny_trainer
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn

from lightning_tricks.callbacks import ActivationStats, GradientClipping, GradientHealth, WeightNormMonitor
from lightning_tricks.callbacks._grad_stats import grad_stats, owns_total_norm


class GradNormCounter(Callback):
    """Counts the ``torch._foreach_norm`` calls over gradients (not weights) and the optimizer steps, per optimizer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.grad_norm_calls, self.steps = 0, 0
        self._grads: set[int] = set()
        original = torch._foreach_norm

        def counting(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            self.grad_norm_calls += any(t.data_ptr() in self._grads for t in tensors)  # views too
            return original(tensors, *args, **kwargs)

        monkeypatch.setattr(torch, "_foreach_norm", counting)

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self._grads = {p.grad.data_ptr() for p in pl_module.parameters() if p.grad is not None}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.steps += 1
        self._grads = {p.grad.data_ptr() for p in pl_module.parameters() if p.grad is not None}


def _all_three(order: str = "health first") -> list[Callback]:
    callbacks = [GradientHealth(), WeightNormMonitor(histogram_every_n_epochs=None), GradientClipping(threshold=0.01)]
    return callbacks if order == "health first" else callbacks[::-1]


@pytest.mark.parametrize("model", [SkippingBoringModel, TinyGAN])
def test_one_gradient_norm_pass_per_optimizer_step(tmp_path: Path, model: type, monkeypatch: pytest.MonkeyPatch):
    """Health, the monitor (logging every step) and clipping read the gradients once per optimizer step between them
    (before: three passes, one each); a GAN makes two steps per batch, each with its own pass."""
    counter = GradNormCounter(monkeypatch)
    csv_fit(tmp_path, [counter, *_all_three()], model())
    assert counter.steps == (16 if model is TinyGAN else 8)
    assert counter.grad_norm_calls == counter.steps


def _fit_and_record(root: Path, callbacks: list[Callback]) -> tuple[list[torch.Tensor], list[dict[str, str]]]:
    seed_everything(0)
    model = SkippingBoringModel()
    _, rows = csv_fit(root, callbacks, model)
    return [p.detach().clone() for p in model.parameters()], rows


def test_same_results_as_each_callback_alone(tmp_path: Path) -> None:
    """Sharing changes no number: clipping steps to the same weights bit for bit as alone, GradientHealth keeps the
    same history of total norms as alone and the monitor logs the pre-clip norms, whatever the callback order."""
    clip_alone, _ = _fit_and_record(tmp_path / "clip", [GradientClipping(threshold=0.01)])
    health_first = _all_three("health first")
    weights, rows = _fit_and_record(tmp_path / "all", health_first)
    clip_first = _all_three("clipping first")
    weights_reversed, rows_reversed = _fit_and_record(tmp_path / "reversed", clip_first)
    for a, b, c in zip(clip_alone, weights, weights_reversed, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # Health alone on a run clipped the same way (clipping after it) sees the same pre-clip norms
    health_alone = GradientHealth()
    _fit_and_record(tmp_path / "health", [health_alone, GradientClipping(threshold=0.01)])
    for shared in (health_first[0], clip_first[2]):
        assert torch.equal(shared._opts[0].norms.nan_to_num(-1), health_alone._opts[0].norms.nan_to_num(-1))
    grad_keys = [k for k in rows[0] if k.startswith("grad_norm/")]
    assert len(grad_keys) == 3  # weight, bias, total
    for key in grad_keys:
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values == [float(r[key]) for r in rows_reversed if r.get(key)] and len(values) == 8
        assert all(v > 0.01 for v in values)  # before clipping to 0.01, though clipping came first in one run


def test_post_clip_norms_are_derived_and_stale_gradients_recomputed() -> None:
    """After clipping by norm the shared statistics hold the post-clip norms (derived from the pre-clip ones, which
    they keep); a new backward or an in-place change of a gradient makes them stale."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).square().sum().backward()
    stats = grad_stats(model, optimizer)
    assert stats is not None and grad_stats(model, optimizer) is stats  # reused while the gradients are unchanged
    before = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()], foreach=True)
    assert torch.equal(stats.total, before)  # bit-identical to torch's own total norm
    trainer: Any = type("T", (), {"gradient_clip_val": None, "strategy": object(), "optimizers": [optimizer]})()
    trainer.loggers, trainer.callbacks = [], []
    GradientClipping(threshold=0.5).on_before_optimizer_step(trainer, model, optimizer)
    after = grad_stats(model, optimizer)
    assert after is stats and torch.equal(after.total_before_clip, before)
    recomputed = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()], foreach=True)
    torch.testing.assert_close(after.total, recomputed)  # 0.5 (derived, not recomputed: equal up to rounding)
    torch.testing.assert_close(after.norms, torch.stack([p.grad.norm() for p in model.parameters()]))
    model[0].weight.grad.mul_(2.0)  # any in-place change (e.g. an L2 penalty added later)
    fresh = grad_stats(model, optimizer)
    assert fresh is not stats and torch.equal(fresh.total_before_clip, fresh.total)
    model(torch.randn(5, 4)).sum().backward()  # accumulation into the same gradients
    assert grad_stats(model, optimizer) is not fresh
    optimizer.zero_grad()
    assert grad_stats(model, optimizer) is None  # no gradient: not a step


def test_the_total_norm_has_one_owner(tmp_path: Path) -> None:
    """``grad_norm/total`` is logged by the monitor if present, else by GradientHealth, else by clipping; nobody
    else logs a copy, constants are not charts, and a GAN's totals are per optimizer."""
    trainer, rows = csv_fit(tmp_path / "all", _all_three("clipping first"), SkippingBoringModel())
    owners = [cb for cb in trainer.callbacks if owns_total_norm(cb, trainer)]
    assert [type(cb).__name__ for cb in owners] == ["WeightNormMonitor"]
    keys = {k for r in rows for k, v in r.items() if v}
    assert "grad_norm/total" in keys and {"grad_clip/clipped_fraction", "grad_health/median_norm"} <= keys
    assert not [k for k in keys if k.endswith("total_norm") or k == "grad_clip/threshold"], keys
    assert not [k for k in keys if k.endswith("_steps")], keys  # nothing exploded: no chart of zeros
    trainer, rows = csv_fit(tmp_path / "two", [GradientClipping(), GradientHealth()], TinyGAN())
    assert [type(cb).__name__ for cb in trainer.callbacks if owns_total_norm(cb, trainer)] == ["GradientHealth"]
    keys = {k for r in rows for k, v in r.items() if v}
    assert {"grad_norm/total/opt0", "grad_norm/total/opt1"} <= keys and "grad_norm/total" not in keys


class _Net(SkippingBoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 2))


def _layouts(log_dir: str) -> list[layout_pb2.Layout]:
    acc = EventAccumulator(log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors("custom_scalars__config__")
    return [layout_pb2.Layout.FromString(e.tensor_proto.string_val[0]) for e in events]


def test_one_merged_layout_per_run_with_readable_names(tmp_path: Path) -> None:
    """Every callback's family in ONE layout, written once (TensorBoard keeps one layout per run); per-parameter tags
    say path and type; every per-parameter scalar is on a chart; a real TensorBoard server serves the layout."""
    seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="run")
    callbacks = [ActivationStats(), *_all_three()]  # registered in this order; the layout has its own order
    callbacks[2] = WeightNormMonitor(per_layer=True)
    tiny_trainer(tmp_path, callbacks, logger=logger, **TRAIN_ONLY_ON_CPU, log_every_n_steps=2).fit(_Net())
    layouts = _layouts(logger.log_dir)
    assert len(layouts) == 1  # written once, by the first callback to reach on_train_start
    categories = [c.title for c in layouts[0].category]
    assert categories == [
        "gradient health",
        "gradient norm per parameter",
        "weight norm per parameter",
        "update / weight ratio per parameter",
        "activations",
    ]
    charts = {c.title: list(c.multiline.tag) for cat in layouts[0].category for c in cat.chart}
    total = "total gradient norm (before clipping)"  # nothing run-specific: TensorBoard merges runs by title
    assert charts[total] == ["^grad_norm/total"]  # registered by three callbacks, merged into one chart
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    scalars, histograms = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    assert "grad_clip/threshold/text_summary" in acc.Tags()["tensors"]  # the constant threshold, as text
    assert acc.Tensors("grad_clip/threshold/text_summary")[0].tensor_proto.string_val[0].startswith(b"0.01")
    assert "grad_norm/layer.0.weight Linear(32→16)" in scalars
    assert "update_ratio/layer.2.bias LayerNorm(16)" in scalars
    assert "weight_norm/layer.3 Linear(16→2)" in scalars  # per layer
    assert "grad_hist/layer.3.weight Linear(16→2)" in histograms
    assert "activation/layer.1 ReLU/dead_fraction" in scalars and "activation/layer.3 Linear(16→2)/std" in scalars
    regexes = [re.compile(r) for tags in charts.values() for r in tags]
    for tag in scalars:
        if tag.split("/")[0] in ("grad_norm", "weight_norm", "update_ratio", "activation", "grad_health", "grad_clip"):
            assert any(r.search(tag) for r in regexes), f"{tag} is on no chart"
    weights = re.compile(charts["weight_norm: weights"][0])  # weights and 1-d parameters (decades apart) split
    assert weights.match("weight_norm/layer.0.weight Linear(32→16)")
    assert not weights.match("weight_norm/layer.0.bias Linear(32→16)")
    with tensorboard_server(tmp_path) as server:
        served = server.wait_for("/data/plugin/custom_scalars/layout", lambda data: bool(data and data.get("category")))
        query = urllib.parse.urlencode({"run": "run/version_0", "tag": charts["grad_norm: weights"][0]})
        lines = server.get(f"/data/plugin/custom_scalars/scalars?{query}")  # what that chart draws
    assert [c["title"] for c in served["category"]] == categories
    assert total in [chart["title"] for chart in served["category"][0]["chart"]]
    assert lines["regex_valid"] and set(lines["tag_to_events"]) == {
        "grad_norm/layer.0.weight Linear(32→16)",
        "grad_norm/layer.3.weight Linear(16→2)",
    }
