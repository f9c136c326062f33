"""Smoke tests of ``benchmarks/``: each benchmark runs end to end in a tiny mode, its result matches the schema
``tables.py`` reads, and ``docs/benchmarks.md`` is the rendering of the stored results.

They check that the benchmarks run and report consistent numbers, never how fast anything is (speed is what the
benchmarks themselves measure, side by side).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--steps", "4", "--warmup", "1", "--epoch-steps", "2", "--rounds", "1"]


def load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as the scripts import each other: top-level modules of that folder."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[None]:
    """The benchmarks silence Lightning's loggers and warnings and set torch's threads: give the other tests them
    back."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    torch.set_num_threads(threads)


@pytest.fixture
def data_env(fashion_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_TRICKS_DATA", str(fashion_mnist_dir))


def test_timing_helpers() -> None:
    timing = load("_timing")
    calls: list[str] = []
    out = timing.interleave(["a", "b", "c"], 3, lambda name, r: calls.append(name) or f"{name}{r}")
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # every round rotates the order
    assert out == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"], "c": ["c0", "c1", "c2"]}
    assert timing.ratios([2.0, 3.0, 8.0], [1.0, 2.0, 4.0]) == {"median": 2.0, "min": 1.5, "max": 2.0}
    settings = timing.device_settings("cpu")
    assert (settings.precision, settings.channels_last, settings.on_device) == ("32-true", False, False)
    assert timing.clock(settings) is time.process_time
    with pytest.raises(ValueError, match=r"`device`.*'auto', 'cpu', 'cuda'.*'tpu'"):
        timing.device_settings("tpu")
    with pytest.raises(ValueError, match=r"`precision`.*'16-mixed'"):
        timing.device_settings("cpu", "16-mixed")
    table = load("tables").markdown_table(["x", "y"], [["row", 1.23456], ["tiny", 0.001234]]).splitlines()
    assert table == ["| x | y |", "|---|---|", "| row | 1.235 |", "| tiny | 0.001234 |"]


def test_overhead_all_suites_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    bench, tables = load("overhead"), load("tables")
    from lightning_tricks import callbacks

    payloads = bench.main(["--suite", "all", *TINY, "--threads", "1"])
    assert list(payloads) == list(bench.SUITES)
    has_timm = importlib.util.find_spec("timm") is not None
    for suite, payload in payloads.items():
        tables.validate(json.loads(json.dumps(payload)), suite)  # what --save writes
        assert payload["benchmark"] == f"overhead-{suite}" and payload["environment"]["threads"] == 1
        (setting,) = payload["settings"]
        rows = {row["name"]: row for row in setting["rows"]}
        assert rows[bench.OFF]["vs_off"] == {"median": 1.0, "min": 1.0, "max": 1.0}
        for row in rows.values():
            assert row["step_ms_mean"] > 0 and row["step_ms_median"] > 0
            assert row["vs_off"]["min"] <= row["vs_off"]["median"] <= row["vs_off"]["max"]
            assert row["met_vs_peers"] == (all(r["median"] <= 1 for r in row["vs_peers"].values())
                                           if row["vs_peers"] else None)  # fmt: skip
            assert row["met"] == (None if row["target"] is None else row["vs_off"]["median"] <= row["target"])
    built = [type(c).__name__ for row in payloads["callbacks"]["settings"][0]["rows"]
             for c in bench.VARIANTS[row["name"]].build()]  # fmt: skip
    assert set(built) == set(callbacks.__all__) | {"DoNothing"}
    monitors = {row["name"]: row for row in payloads["monitors"]["settings"][0]["rows"]}
    assert monitors[bench.FOUR]["target"] == 1.03 and len(monitors) == 6  # no callback, four alone, four together
    ema = {row["name"]: row for row in payloads["ema"]["settings"][0]["rows"]}
    peers = {"Lightning EMAWeightAveraging(decay=0.999)", *(["timm ModelEmaV3(decay=0.999)"] if has_timm else [])}
    assert set(ema["EMA(decay=0.999)"]["vs_peers"]) == peers
    assert has_timm or payloads["ema"]["notes"] == [
        "timm ModelEmaV3(decay=0.999) left out: timm is missing (pip install -e '.[bench]')"]  # fmt: skip
    groups = {row["group"] for row in payloads["peers"]["settings"][0]["rows"] if row["vs_peers"]}
    assert groups == {"clipping", "clipping every step", "grad-norm monitor", "early stopping"}
    printed = capsys.readouterr().out
    assert "| **ours** `EMA(decay=0.999)` | ema |" in printed and "Command: `python benchmarks/overhead.py" in printed


def test_overhead_registry() -> None:
    """Every callback of the package is timed alone (fresh instances each time) and in the all-together variant, in
    the recommended order; every peer has an "ours" variant of its group in the same suite."""
    bench = load("overhead")
    from lightning_tricks import callbacks

    singles = [name for name, v in bench.VARIANTS.items() if v.side == "ours" and len(v.build()) == 1]
    assert sorted(type(bench.VARIANTS[name].build()[0]).__name__ for name in singles if "callbacks" in
                  bench.VARIANTS[name].suites) == sorted(callbacks.__all__)  # fmt: skip
    together = bench.VARIANTS[bench.ALL].build()
    assert [type(c).__name__ for c in together] == [name for name, *_ in bench.CALLBACKS]
    assert all(a is not b for a, b in zip(together, bench.VARIANTS[bench.ALL].build(), strict=True))
    for name, variant in bench.VARIANTS.items():
        assert set(variant.suites) <= set(bench.SUITES), name
        if variant.side == "peer":
            assert any(v.side == "ours" and v.group == variant.group and set(v.suites) & set(variant.suites)
                       for v in bench.VARIANTS.values()), name  # fmt: skip


def test_overhead_table_says_when_a_target_is_unsettled() -> None:
    """A target inside the rounds' range of the ratio is reported as not settled; ratios show their range."""
    tables = load("tables")
    assert tables.ratio({"median": 1.04321, "min": 0.98, "max": 1.1}) == "1.043 (0.980-1.100)"
    assert tables.ratio({"median": 1.0, "min": 1.0, "max": 1.0}) == "1.000"
    assert tables.verdict(True, [{"median": 1.0, "min": 0.9, "max": 1.2}], 1.03) == "met (inside the rounds' range)"
    assert tables.verdict(False, [{"median": 1.2, "min": 1.1, "max": 1.3}], 1.03) == "**not met**"
    row = {"name": "EMA(decay=0.999)", "group": "ema", "side": "ours", "step_ms_mean": 5.0, "step_ms_median": 4.0,
           "vs_off": {"median": 1.1, "min": 1.0, "max": 1.2}, "target": None, "met": None, "met_vs_peers": False,
           "vs_peers": {"peer": {"median": 1.05, "min": 0.95, "max": 1.2}}}  # fmt: skip
    setting = {"setting": "cpu-mlp", "model": "M()", "batch_size": 2, "precision": "32-true", "clock": "c",
               "rows": [row]}  # fmt: skip
    text = tables.render_overhead({"steps": 10, "warmup": 2, "epoch_steps": 5, "rounds": 3, "settings": [setting],
                                   "notes": ["a note"]})  # fmt: skip
    assert "8 timed steps per fit (epochs of 5), rounds: 3" in text and text.endswith("Note: a note")
    assert ("| **ours** `EMA(decay=0.999)` | ema | 5.000 / 4.000 | 1.100 (1.000-1.200) | 1.050 (0.950-1.200) to peer"
            " | <= each peer: **not met** (inside the rounds' range) |") in text  # fmt: skip


def test_overhead_step_includes_the_optimizer_step_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timed step holds the work of an optimizer step post-hook (where EMA updates): a fake clock advanced only
    there reads exactly one tick per step."""
    import lightning.pytorch as pl

    bench = load("overhead")
    ticks = [0.0]

    class TicksInStepHook(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            trainer.optimizers[0].register_step_post_hook(lambda *args: ticks.__setitem__(0, ticks[0] + 1.0))

    monkeypatch.setattr(bench._timing, "clock", lambda settings: lambda: ticks[0])
    args = bench.argparse.Namespace(steps=5, epoch_steps=2)
    steps = bench.fit("cpu-mlp", bench.Variant(("callbacks",), "-", "ours", lambda: [TicksInStepHook()]), args, 0)
    assert steps == [1.0] * 5


def test_overhead_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("overhead")
    with pytest.raises(SystemExit):
        bench.main(["--steps", "3", "--warmup", "5"])
    assert "need --steps >= --warmup + 2" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.main(["--settings", "gpu-resnet18"])
        assert "gpu-resnet18 needs a CUDA GPU" in capsys.readouterr().err


def test_trainer_vs_plain_smoke(data_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("trainer_vs_plain")
    for spec in bench.SETTINGS.values():
        spec["data_args"] = {**spec["data_args"], "val_size": 64}
    args = ["--settings", "cpu-mlp", "cpu-resnet", "--epochs", "2", "--rounds", "1", "--train-subset", "64"]
    record = bench.main([*args, "--threads", "1"])
    load("tables").validate(record)
    assert [r["setting"] for r in record["results"]] == ["cpu-mlp", "cpu-resnet"]
    for r in record["results"]:
        epoch = r["epoch_seconds"]
        assert set(epoch) == {"plain", "lightning_minimal", "lightning_ours"} and all(s > 0 for s in epoch.values())
        assert r["ours_over_plain"]["median"] == pytest.approx(epoch["lightning_ours"] / epoch["plain"])
        assert r["minimal_over_plain"]["median"] == pytest.approx(epoch["lightning_minimal"] / epoch["plain"])
    assert "| cpu-mlp |" in capsys.readouterr().out


def test_trainer_vs_plain_loop_trains(data_env: None) -> None:
    """The hand-written baseline does real training work: the network's weights change."""
    bench = load("trainer_vs_plain")
    settings = bench._timing.device_settings("cpu")
    bench.SETTINGS["cpu-mlp"]["data_args"] = {**bench.SETTINGS["cpu-mlp"]["data_args"], "train_subset": 64}
    model, _ = bench.build("cpu-mlp", settings, 0, False)
    before = [p.detach().clone() for p in model.net.parameters()]
    original_build = bench.build
    bench.build = lambda *a, **k: (model, original_build(*a, **k)[1])
    try:
        times = bench.run_plain("cpu-mlp", settings, 2, 0, bench._timing.clock(settings), False)
    finally:
        bench.build = original_build
    assert len(times) == 2 and all(t > 0 for t in times)
    assert any(not p.equal(b) for p, b in zip(model.net.parameters(), before, strict=True))


def test_time_to_accuracy_smoke(data_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("time_to_accuracy")
    tiny = ["--models", "mlp", "--epochs", "2", "--limit-batches", "2", "--target", "0.0", "--seeds", "0", "1"]
    record = bench.main([*tiny, "--set", "hidden_sizes=[32]", "batch_size=64", "resnet.width=3"])  # resnet.*: ignored
    load("tables").validate(json.loads(json.dumps(record)))
    entry = record["models"]["mlp"]
    assert entry["recipe"]["hidden_sizes"] == [32] and "width" not in entry["recipe"]
    for run in entry["runs"]:
        assert run["epochs"] == 2 and len(run["val_acc_per_epoch"]) == 2
        assert 0.0 <= run["test_acc"] <= 1.0 and run["fit_seconds"] > 0
        assert run["val_target_epoch"] == 1  # target 0: reached after the first epoch
    summary = entry["summary"]
    assert summary["seeds"] == 2 and summary["val_target_reached"] == "2/2"
    assert summary["test_acc_mean"] == pytest.approx(sum(run["test_acc"] for run in entry["runs"]) / 2)
    assert "| mlp | 2 | 2 |" in capsys.readouterr().out


def test_gpu_check_dry_run(data_env: None, tmp_path: Path) -> None:
    """The GPU check's every step runs on the CPU at toy sizes and leaves its JSON and markdown summaries."""
    bench = load("gpu_check")
    record = bench.main(["--dry-run", "--out", str(tmp_path)])
    load("tables").validate(record)
    assert [s["name"] for s in record["steps"]] == [s.name for s in bench.STEPS]
    assert all(s["status"] == "ran" for s in record["steps"]), [(s["name"], s.get("error")) for s in record["steps"]]
    assert all(s["met"] is None for s in record["steps"])  # toy sizes: no target judged
    tests = record["steps"][0]["figures"]
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(record))
    summary = (tmp_path / "gpu_check.md").read_text()
    assert "dry run" in summary and all(f"| {s.name} | ran |" in summary for s in bench.STEPS)


def test_cpu_threads_reads_the_step_time_off_the_event_times(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    bench = load("cpu_threads")
    writer = SummaryWriter(str(tmp_path / "run" / "version_0"))
    for step, wall in ((9, 100.0), (19, 102.0), (29, 104.5), (39, 106.5)):  # 0.2, 0.25 and 0.2 s per step
        writer.add_scalar("train/loss_step", 1.0, step, walltime=wall)
    writer.close()
    assert bench.step_seconds(tmp_path) == pytest.approx(0.2)
    assert set(bench.VARIANTS) == {"1 thread", "2 threads", "2 threads, passive wait"}
    assert bench.VARIANTS["2 threads, passive wait"]["OMP_WAIT_POLICY"] == "PASSIVE"


def test_results_schema_is_checked() -> None:
    """Every stored result matches its schema; a missing key or a wrong type is refused with its name."""
    tables = load("tables")
    stored = sorted((BENCHMARKS / "results").glob("*.json"))
    assert {path.stem for path in stored} >= {f"overhead-{suite}" for suite in load("overhead").SUITES}
    payload = tables.load(stored[0])
    broken = copy.deepcopy(payload)
    del broken["environment"]["load_average"]
    with pytest.raises(ValueError, match="environment: missing key 'load_average'"):
        tables.validate(broken)
    broken = copy.deepcopy(payload)
    broken["environment"]["cores"] = "two"
    with pytest.raises(ValueError, match="'cores' should be"):
        tables.validate(broken)
    with pytest.raises(ValueError, match="unknown benchmark 'nothing'"):
        tables.validate({**payload, "benchmark": "nothing"})
    overhead = tables.load(BENCHMARKS / "results" / "overhead-ema.json")
    overhead["settings"][0]["rows"][0]["vs_off"] = {"median": 1.0}
    with pytest.raises(ValueError, match="missing key 'min'"):
        tables.validate(overhead)


def test_docs_page_is_the_rendering_of_the_stored_results(tmp_path: Path) -> None:
    """docs/benchmarks.md is exactly what tables.py renders from benchmarks/results/*.json and page.md."""
    tables = load("tables")
    assert tables.PAGE.read_text() == tables.page(), "docs/benchmarks.md is stale: run python benchmarks/tables.py"
    assert tables.main(["--check"]) == 0
    template = tmp_path / "page.md"
    template.write_text("# t\n\n<!-- result: trainer_vs_plain from: python benchmarks/trainer_vs_plain.py -->\n")
    expected = "# t\n\nNo stored run: `python benchmarks/trainer_vs_plain.py` makes one.\n"
    assert tables.page(tmp_path, template) == expected
    (tmp_path / "overhead-ema.json").write_text((BENCHMARKS / "results" / "overhead-ema.json").read_text())
    with pytest.raises(ValueError, match=r"\['overhead-ema'\] have no '<!-- result"):
        tables.page(tmp_path, template)
