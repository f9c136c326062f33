"""Smoke tests of the benchmark scripts in ``benchmarks/``: each one runs end to end in a tiny mode.

They check that the scripts run and report consistent numbers, never how fast anything is (speed is what the scripts
themselves measure, side by side).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the scripts import their sibling ``_timing`` as a top-level module)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    if name == "_timing":
        return importlib.import_module("_timing")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[None]:
    """The scripts silence Lightning's loggers and may set torch's thread count: give the other tests them back."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    threads = torch.get_num_threads()
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
    table = timing.markdown_table(["x", "y"], [["row", 1.23456], ["tiny", 0.001234]]).splitlines()
    assert table == ["| x | y |", "|---|---|", "| row | 1.235 |", "| tiny | 0.001234 |"]
    settings = timing.device_settings("cpu")
    assert (settings.precision, settings.channels_last, settings.on_device) == ("32-true", False, False)
    with pytest.raises(ValueError, match=r"`device`.*'auto', 'cpu', 'cuda'.*'tpu'"):
        timing.device_settings("tpu")
    with pytest.raises(ValueError, match=r"`precision`.*'16-mixed'"):
        timing.device_settings("cpu", "16-mixed")


def test_trainer_vs_plain_smoke(data_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("trainer_vs_plain")
    for spec in bench.SETTINGS.values():
        spec["data_args"] = {**spec["data_args"], "val_size": 64}
    args = ["--settings", "cpu-mlp", "cpu-resnet", "--epochs", "2", "--repeats", "1", "--train-subset", "64"]
    results = bench.main([*args, "--threads", "1"])
    assert [r["setting"] for r in results] == ["cpu-mlp", "cpu-resnet"]
    assert all(r["hardware"].endswith("1 torch threads") for r in results)
    for r in results:
        epoch = r["epoch_seconds_median"]
        assert set(epoch) == {"plain", "lightning_minimal", "lightning_ours"}
        assert all(seconds > 0 for seconds in epoch.values())
        assert r["ratio_ours_over_plain"] == pytest.approx(epoch["lightning_ours"] / epoch["plain"])
        assert r["ratio_minimal_over_plain"] == pytest.approx(epoch["lightning_minimal"] / epoch["plain"])
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0]) == results
    assert "| cpu-mlp |" in out and "| cpu-resnet |" in out


def test_trainer_vs_plain_loop_trains(data_env: None) -> None:
    """The hand-written baseline does real training work: the network's weights change."""
    bench = load("trainer_vs_plain")
    settings = bench.device_settings("cpu")
    bench.SETTINGS["cpu-mlp"]["data_args"] = {**bench.SETTINGS["cpu-mlp"]["data_args"], "train_subset": 64}
    model, _ = bench.build("cpu-mlp", settings, 0, False)
    before = [p.detach().clone() for p in model.net.parameters()]
    original_build = bench.build
    bench.build = lambda *a, **k: (model, original_build(*a, **k)[1])
    times = bench.run_plain("cpu-mlp", settings, 2, 0, bench.make_clock(settings, "wall"), False)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert any(not p.equal(b) for p, b in zip(model.net.parameters(), before, strict=True))


def test_callback_overhead_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("callback_overhead")
    args = ["--settings", "cpu-mlp", "--steps", "6", "--warmup", "1", "--repeats", "1", "--only", "EMA"]
    results = bench.main([*args, "--threads", "0"])
    assert [r["callbacks"] for r in results] == ["do-nothing", "EMA", "all"]
    assert all(r["noise_mean"] >= abs(results[0]["ratio_mean"] - 1) for r in results)  # the do-nothing row sets it
    for r in results:
        assert r["steps_timed"] == 5
        assert r["on_median_ms"] > 0 and r["off_median_ms"] > 0
        assert r["ratio_median"] == pytest.approx(r["on_median_ms"] / r["off_median_ms"])
        assert math.isfinite(r["ratio_mean"])
    assert "| cpu-mlp | all |" in capsys.readouterr().out


def test_callback_overhead_builds_every_callback() -> None:
    bench = load("callback_overhead")
    from lightning_tricks import callbacks

    built = bench.make_callbacks(list(bench.CALLBACKS))
    assert sorted(type(c).__name__ for c in built) == sorted(callbacks.__all__)


def test_time_to_accuracy_smoke_and_merge(data_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("time_to_accuracy")
    tiny = ["--models", "mlp", "--epochs", "2", "--limit-batches", "2", "--target", "0.0"]
    tiny += ["--set", "hidden_sizes=[32]", "batch_size=64", "resnet.width=3"]  # the resnet-scoped key is ignored
    outputs = []
    for seed in (0, 1):
        results = bench.main([*tiny, "--seeds", str(seed)])
        (run,) = results["models"]["mlp"]["runs"]
        assert results["models"]["mlp"]["recipe"]["hidden_sizes"] == [32]
        assert "width" not in results["models"]["mlp"]["recipe"]
        assert run["epochs"] == 2 and len(run["val_acc_per_epoch"]) == 2
        assert 0.0 <= run["test_acc"] <= 1.0 and run["fit_seconds"] > 0
        assert run["val_target_epoch"] == 1  # target 0: reached after the first epoch
        path = tmp_path / f"seed{seed}.txt"
        path.write_text(capsys.readouterr().out)
        outputs.append((path, run))
    merged = bench.main(["--merge", *(str(path) for path, _ in outputs)])
    summary = merged["models"]["mlp"]["summary"]
    assert summary["seeds"] == 2
    assert summary["test_acc_mean"] == pytest.approx((outputs[0][1]["test_acc"] + outputs[1][1]["test_acc"]) / 2)
    assert summary["val_target_reached"] == "2/2"
    assert "| mlp | fp32 | 2 | 2 |" in capsys.readouterr().out


def test_ema_overhead_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    results = load("ema_overhead").main(["--repeats", "1", "--steps", "3", "--calls", "2"])
    for name in ("small_mlp", "big_mlp"):
        assert name in results, sorted(results)
        for key in ("update_lightning_over_ours", "step_ours_over_none", "step_lightning_over_none"):
            assert math.isfinite(results[name][key]) and results[name][key] > 0
        assert results[name]["step_noise"] >= abs(results[name]["step_nothing_over_none"] - 1)
    assert "Lightning / ours" in capsys.readouterr().out


def test_monitor_overhead_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    results = load("monitor_overhead").main(
        ["--settings", "cpu-mlp", "--steps", "4", "--warmup", "1", "--repeats", "1"]
    )
    assert {r["monitors"] for r in results} >= {"all", "do-nothing"}
    assert all(r["verdict"] in ("ok", "over", "implausible", "-") for r in results)
    assert all(math.isfinite(r["ratio_median"]) and r["ratio_median"] > 0 for r in results)
    printed = capsys.readouterr().out
    assert "| cpu-mlp | all |" in printed and "on/off median ± noise" in printed


def test_noise_floor_and_verdicts() -> None:
    """A ratio under its do-nothing noise floor is implausible (a warning, never "ok"); the floor is the worst round."""
    timing = load("_timing")
    runs = {
        "off": [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],
        timing.NULL: [[1.02, 1.02, 1.02], [1.9, 1.9, 1.9]],  # rounds: +2%, -5%
        "cheap": [[1.01, 1.01, 1.01], [2.02, 2.02, 2.02]],
        "too_fast": [[0.8, 0.8, 0.8], [1.6, 1.6, 1.6]],
        "slow": [[1.3, 1.3, 1.3], [2.6, 2.6, 2.6]],
    }
    ratios = timing.step_ratios(runs)
    assert "off" not in ratios
    assert ratios["cheap"]["noise_mean"] == pytest.approx(0.05)  # the worse of the two rounds
    assert ratios["slow"]["ratio_mean"] == pytest.approx(1.3)
    rows = {name: timing.judge({"name": name, **ratios[name]}, target=1.05) for name in ("cheap", "too_fast", "slow")}
    assert (rows["cheap"]["verdict"], rows["cheap"]["warning"]) == ("ok", None)
    assert rows["too_fast"]["verdict"] == "implausible" and "below 1 - noise" in rows["too_fast"]["warning"]
    assert timing.target_cell(rows["too_fast"]) == "implausible (see warning)"
    assert rows["slow"]["verdict"] == "over" and not rows["slow"]["within_noise"]
    assert rows["cheap"]["within_noise"] and timing.target_cell(rows["cheap"]) == "<= 1.05 (ok, within noise)"
    assert timing.verdict(0.97, 0.05) == ("-", None)  # inside the noise: no target, no warning
    assert timing.ratio_cell(1.0432, 0.0123) == "1.043 ± 0.012"


def test_hook_cost_smoke_and_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("hook_cost")
    args = ["--groups", "clipping", "ema", "--steps", "5", "--warmup", "1", "--repeats", "1", "--plain-epochs", "0"]
    payload = bench.main(args)
    rows = {row["implementation"]: row for row in payload["rows"]}
    timm = "timm ModelEmaV3(decay=0.999) in a callback"
    expected = {
        "do-nothing callback (noise floor)",
        'GradientClipping(mode="norm", threshold=1)',
        "Trainer(gradient_clip_val=1)",
        "EMA(decay=0.999)",
        "Lightning EMAWeightAveraging(decay=0.999)",
    }
    assert set(rows) == expected | ({timm} if bench.HAS_TIMM else set())
    if not bench.HAS_TIMM:
        assert any("timm is not installed" in note for note in payload["notes"])
    # Lightning's clip_gradients was timed once per step, and our clipping hook ran once per step
    assert rows["Trainer(gradient_clip_val=1)"]["hook_calls_per_step"] == 1.0
    ours_clipping = rows['GradientClipping(mode="norm", threshold=1)']
    assert ours_clipping["hook_calls_per_step"] == 1.0
    assert ours_clipping["hook_ms_by_callback"] == {"GradientClipping": pytest.approx(ours_clipping["hook_ms_mean"])}
    assert all(row["hook_ms_mean"] > 0 for row in rows.values())
    assert rows["do-nothing callback (noise floor)"]["hook_calls_per_step"] >= 6  # every per-step hook, wrapped
    assert [c["group"] for c in payload["comparisons"]] == ["clipping", "ema"]
    for c in payload["comparisons"]:
        assert c["met"] == (c["ours_hook_ms"] <= c["cheapest_peer_hook_ms"])
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0]) == payload
    assert "| clipping | **ours** GradientClipping" in out

    tables = load("tables")
    saved = tmp_path / "run.txt"
    saved.write_text(out)
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- table: hook_cost -->\nold table\n<!-- /table: hook_cost -->\nafter\n")
    tables.main(["hook_cost", str(saved), "--into", str(doc)])
    text = doc.read_text()
    assert "old table" not in text and bench.render(payload) in text and text.endswith("after\n")
    tables.main(["hook_cost", str(saved), "--into", str(doc)])
    assert doc.read_text() == text  # idempotent
    with pytest.raises(ValueError, match="no '<!-- table: monitor_overhead -->'"):
        tables.replace_block("no markers", "monitor_overhead", "x", "y")
    with pytest.raises(ValueError, match="holds no JSON line"):
        tables.read_payload(doc)


def test_gpu_check_dry_run(data_env: None, tmp_path: Path) -> None:
    """The GPU check's every step runs on the CPU at toy sizes and leaves its JSON and markdown summaries."""
    bench = load("gpu_check")
    payload = bench.main(["--dry-run", "--out", str(tmp_path)])
    assert [s["name"] for s in payload["steps"]] == [s.name for s in bench.STEPS]
    assert all(s["status"] == "ran" for s in payload["steps"]), [(s["name"], s.get("error")) for s in payload["steps"]]
    assert all(s["met"] is None for s in payload["steps"])  # toy sizes: no target judged
    tests = payload["steps"][0]["figures"]
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == payload
    summary = (tmp_path / "gpu_check.md").read_text()
    assert "dry run" in summary and all(f"| {s.name} | ran |" in summary for s in bench.STEPS)


def test_docs_tables_are_the_stored_results() -> None:
    """Every generated table in the README and RESULTS.md is the rendering of its stored JSON (no hand edits)."""
    tables = load("tables")
    root = BENCHMARKS.parent
    stored = sorted((BENCHMARKS / "results").glob("*.json"))
    assert stored, "benchmarks/results/ holds no stored run"
    for path in stored:
        name = path.stem
        table = tables.render(name, tables.read_payload(path))
        found = 0
        for doc in (root / "README.md", BENCHMARKS / "RESULTS.md"):
            text = doc.read_text()
            if f"<!-- table: {name} -->" in text:
                found += 1
                regenerated = tables.replace_block(text, name, table, f"benchmarks/results/{name}.json")
                assert regenerated == text, f"{doc.name}'s {name} table differs from {path.name}: rerun tables.py"
        assert found, f"{path.name} is shown in neither README.md nor RESULTS.md"


def test_hook_timer_times_the_hooks_a_callback_registers() -> None:
    """An optimizer step hook registered from a timed callback hook is timed and charged to that callback."""
    import lightning.pytorch as pl

    bench = load("hook_cost")
    ticks = iter(range(100))
    timer = bench.HookTimer(lambda: float(next(ticks)), bench.StepClock(lambda: 0.0))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    post_calls: list[str] = []

    class Registers(pl.Callback):
        def on_fit_start(self, *args: object) -> None:
            optimizer.register_step_post_hook(lambda *a: post_calls.append("timed"))

    callback = Registers()
    timer.wrap_callback(callback)
    with timer.registrations():
        callback.on_fit_start(None, None)
        optimizer.register_step_post_hook(lambda *a: post_calls.append("not timed"))  # not from a timed hook
    optimizer.step()
    assert post_calls == ["timed", "not timed"]
    assert timer.calls[-1] == 2  # on_fit_start, then the post hook (before any batch: step -1)
    assert {owner for owner, _ in timer.by_owner} == {"Registers"}
    assert timer.seconds[-1] == 2.0  # each timed call took one tick of the fake clock


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
