"""The monitors' ``log_metrics`` writes one TensorBoard event per call, read back exactly as the logger's own."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks.callbacks._logging import log_metrics


def _scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(log_dir)
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_same_scalars_as_the_loggers_own_log_metrics(tmp_path: Path) -> None:
    metrics = [{"activation/net.1 Linear(784→256)/std": 0.5 + i, "grad_norm/total": float(i), "x/nan": float("nan")}
               for i in range(3)]  # fmt: skip
    for prefix in ("", "run"):
        ours = TensorBoardLogger(tmp_path / "ours", name=prefix or "plain", prefix=prefix)
        theirs = TensorBoardLogger(tmp_path / "theirs", name=prefix or "plain", prefix=prefix)
        csv = CSVLogger(tmp_path / "csv", name=prefix or "plain")
        trainer = SimpleNamespace(is_global_zero=True, loggers=[ours, csv])
        for step, values in enumerate(metrics):
            log_metrics(trainer, values, step=10 * step)  # type: ignore[arg-type]
            theirs.log_metrics(values, step=10 * step)
        ours.experiment.flush()
        theirs.experiment.flush()
        csv.save()
        got, expected = _scalars(ours.log_dir), _scalars(theirs.log_dir)
        assert set(got) == set(expected) and len(got) == 3
        assert all((prefix == "") != tag.startswith("run-") for tag in got)
        for tag, points in expected.items():
            assert [s for s, _ in got[tag]] == [s for s, _ in points] == [0, 10, 20]
            assert str([v for _, v in got[tag]]) == str([v for _, v in points])  # NaN compares by its text
        assert (Path(csv.log_dir) / "metrics.csv").read_text().count("\n") == 4  # other loggers: log_metrics


def test_nothing_is_written_off_rank_zero(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="x")
    log_metrics(SimpleNamespace(is_global_zero=False, loggers=[logger]), {"a": 1.0}, step=0)  # type: ignore[arg-type]
    logger.experiment.flush()
    assert _scalars(logger.log_dir) == {}


def test_a_subclass_with_its_own_log_metrics_sees_every_value(tmp_path: Path) -> None:
    seen: list[dict[str, float]] = []

    class Recording(TensorBoardLogger):
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            seen.append(dict(metrics))
            super().log_metrics(metrics, step)

    logger = Recording(tmp_path, name="x")
    log_metrics(SimpleNamespace(is_global_zero=True, loggers=[logger]), {"a": 1.0, "b": 2.0}, step=3)  # type: ignore[arg-type]
    logger.experiment.flush()
    assert seen == [{"a": 1.0, "b": 2.0}]
    assert _scalars(logger.log_dir) == {"a": [(3, 1.0)], "b": [(3, 2.0)]}
