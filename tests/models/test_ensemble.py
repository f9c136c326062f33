"""Tests of ``EnsembleClassifier``: probability averaging, checkpoint loading, evaluation, refusing ``fit``."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers.trainers import ON_CPU, tiny_trainer
from lightning.pytorch import seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.models import Classifier, EnsembleClassifier, InceptionClassifier, MLPClassifier
from lightning_tricks.models.ensemble import average_probabilities

_trainer = partial(tiny_trainer, **ON_CPU)  # quiet, CPU, no checkpoints, Lightning's default length


class FixedLogits(nn.Module):
    """Returns the same logits row for every input."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.register_buffer("row", torch.tensor(row))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row.expand(x.shape[0], -1)


class Fixed(Classifier):
    def __init__(self, row: list[float]) -> None:
        super().__init__(num_classes=3)
        self.net = FixedLogits(row)


def test_average_probabilities_matches_hand_computation() -> None:
    a = torch.tensor([[math.log(0.6), math.log(0.3), math.log(0.1)]])
    b = torch.tensor([[0.0, 0.0, math.log(2.0)]]) + 5.0  # softmax: [0.25, 0.25, 0.5]; the offset must not matter
    averaged = average_probabilities([a, b]).exp()
    assert torch.allclose(averaged, torch.tensor([[0.425, 0.275, 0.3]]), atol=1e-6)


def test_evaluates_nll_and_accuracy_of_the_averaged_probabilities(tmp_path: Path) -> None:
    # Member 1 says class 0 (p = 0.6, 0.3, 0.1), member 2 says class 2 (0.25, 0.25, 0.5): the average picks class 0.
    ensemble = EnsembleClassifier(
        members=[Fixed([math.log(0.6), math.log(0.3), math.log(0.1)]), Fixed([0.0, 0.0, math.log(2.0)])]
    )
    y = torch.tensor([0, 0, 2, 1])
    data = DataLoader(TensorDataset(torch.zeros(4, 1, 2, 2), y), batch_size=2)
    trainer = _trainer(tmp_path)
    results = trainer.test(ensemble, data, verbose=False)[0]
    assert results["test/acc"] == pytest.approx(0.5)
    assert results["test/loss"] == pytest.approx(-(2 * math.log(0.425) + math.log(0.3) + math.log(0.275)) / 4)
    assert trainer.validate(ensemble, data, verbose=False)[0]["val/acc"] == pytest.approx(0.5)
    probabilities = torch.cat(trainer.predict(ensemble, data))
    assert torch.allclose(probabilities, torch.tensor([0.425, 0.275, 0.3]).expand(4, 3), atol=1e-6)


def test_refuses_fit(tmp_path: Path) -> None:
    ensemble = EnsembleClassifier(members=[Fixed([0.0, 1.0, 2.0])])
    assert not any(p.requires_grad for p in ensemble.parameters())
    data = DataLoader(TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)), batch_size=2)
    with pytest.raises(RuntimeError, match=r"no trainable parameters.*cannot be fitted"):
        _trainer(tmp_path, max_steps=1).fit(ensemble, data)


def test_invalid_members_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleClassifier()
    with pytest.raises(ValueError, match=r"agree on `num_classes`.*\[3, 10\]"):
        EnsembleClassifier(members=[Fixed([0.0, 1.0, 2.0]), MLPClassifier(hidden_sizes=[4])])
    with pytest.raises(ValueError, match="Classifier instances"):
        EnsembleClassifier(members=[nn.Linear(2, 2)])
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, path)
    with pytest.raises(ValueError, match="does not say which Classifier class"):
        EnsembleClassifier(checkpoints=[str(path)])


def train_member(model: Classifier, train: TensorDataset, val: TensorDataset, path: Path, seed: int) -> float:
    """Train ``model`` for one epoch, save a checkpoint at ``path`` and return its validation accuracy."""
    seed_everything(seed)
    trainer = _trainer(path.parent, max_epochs=1)
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True))
    trainer.save_checkpoint(path)
    return trainer.validate(model, DataLoader(val, batch_size=500), verbose=False)[0]["val/acc"]


def test_ensemble_of_trained_checkpoints_is_at_least_as_good_as_the_worse_member(
    tmp_path: Path, fashion_subset: tuple[TensorDataset, TensorDataset]
) -> None:
    train, val = fashion_subset
    paths = [tmp_path / "mlp.ckpt", tmp_path / "mlp_wn.ckpt"]
    accuracies = [
        train_member(MLPClassifier(hidden_sizes=[64], lr=2e-3), train, val, paths[0], seed=1),
        train_member(MLPClassifier(hidden_sizes=[32], norm="weight", activation="tanh"), train, val, paths[1], 2),
    ]
    ensemble = EnsembleClassifier(checkpoints=[str(p) for p in paths])
    assert [m.hparams.hidden_sizes for m in ensemble.members] == [[64], [32]]
    trainer = _trainer(tmp_path)
    data = DataLoader(val, batch_size=500)
    accuracy = trainer.test(ensemble, data, verbose=False)[0]["test/acc"]
    assert min(accuracies) > 0.5  # both members learned something (chance is 0.1)
    assert accuracy >= min(accuracies)

    # The ensemble's own checkpoint reloads its members from the same files and predicts the same.
    trainer.save_checkpoint(tmp_path / "ensemble.ckpt")
    restored = EnsembleClassifier.load_from_checkpoint(tmp_path / "ensemble.ckpt")
    x = val.tensors[0][:16]
    assert torch.allclose(restored(x), ensemble.eval()(x))


def test_loads_the_right_class_from_each_checkpoint(tmp_path: Path) -> None:
    data = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=8)
    inception = InceptionClassifier(stages=[1], width=2, stem_channels=4)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(inception, data)
    trainer.save_checkpoint(tmp_path / "inception.ckpt")
    checkpoint = str(tmp_path / "inception.ckpt")
    ensemble = EnsembleClassifier(members=[MLPClassifier(hidden_sizes=[4])], checkpoints=[checkpoint])
    loaded = ensemble.members[1]
    assert type(loaded) is InceptionClassifier and loaded.hparams.width == 2
    assert torch.equal(loaded.net[-1].weight, inception.net[-1].weight)
    assert ensemble.hparams == {"checkpoints": [checkpoint]}
