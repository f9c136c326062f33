"""The package's meaning of "a step" (the step rule), on plain torch optimizers: what counts, per optimizer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lightning_tricks.callbacks._steps import OptimizerSteps, optimizer_index, optimizer_key


def test_counts_real_steps_per_optimizer() -> None:
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt_a, opt_b = torch.optim.SGD([a], lr=0.1), torch.optim.SGD([b], lr=0.1)
    seen: list[tuple[int, int]] = []
    steps = OptimizerSteps(on_step=lambda i, n: seen.append((i, n)))
    steps.attach(SimpleNamespace(optimizers=[opt_a, opt_b]))  # type: ignore[arg-type]
    for grads in ([1.0, 1.0], None, [2.0, 0.0]):  # the None step: a skipped batch (no gradient at all)
        a.grad = None if grads is None else torch.tensor(grads)
        opt_a.step()
    b.grad = torch.ones(3)
    opt_b.step()
    assert steps.counts == [2, 1] and seen == [(0, 1), (0, 2), (1, 1)]
    assert (steps.index(opt_b), steps.count(1), steps.num_optimizers) == (1, 1, 2)
    steps.detach()
    opt_b.step()  # no longer counted
    restored = OptimizerSteps()
    restored.load_state_dict(steps.state_dict())
    assert restored.counts == [2, 1]
    steps.reset()
    assert steps.counts == []


def test_refuses_an_optimizer_without_step_hooks() -> None:
    class Wrapper:  # e.g. an optimizer wrapper that is no torch Optimizer
        param_groups: list = []

    with pytest.raises(MisconfigurationException, match=r"Optimizer 0 \(Wrapper\) is not a `torch.optim.Optimizer`"):
        OptimizerSteps().attach(SimpleNamespace(optimizers=[Wrapper()]))  # type: ignore[arg-type]


def test_keys_and_indices() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    assert optimizer_index(SimpleNamespace(optimizers=[object(), opt]), opt) == 1  # type: ignore[arg-type]
    assert optimizer_key("grad_clip/threshold", 1, 1) == "grad_clip/threshold"
    assert optimizer_key("grad_clip/threshold", 1, 2) == "grad_clip/threshold/opt1"
