"""Render the stored benchmark results (``benchmarks/results/*.json``) into ``docs/benchmarks.md``.

Every benchmark writes its result with ``--save``, one JSON file per result, the current run only (history is in git);
this script checks each file against its schema and renders each one into its place in ``benchmarks/page.md`` (the
page's prose), which gives the page:

    python benchmarks/tables.py            # write docs/benchmarks.md
    python benchmarks/tables.py --check    # exit 1 if docs/benchmarks.md is not the rendering of the results

A figure on that page is never typed by hand: change the prose in ``page.md``, or rerun a benchmark. The benchmarks
print their own tables with :func:`render`. No torch import: reading results is cheap.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
TEMPLATE = ROOT / "benchmarks" / "page.md"

# --- Schemas: the keys every result holds, and their types. ---
NUMBER, OPTIONAL_NUMBER, OPTIONAL_BOOL = (int, float), (int, float, type(None)), (bool, type(None))
ENVIRONMENT = {
    "date": str,
    "cpu": str,
    "cores": int,
    "gpu": (str, type(None)),
    "python": str,
    "torch": str,
    "lightning": str,
    "threads": int,
    "load_average": list,
    "cpu_seconds": NUMBER,
    "wall_seconds": NUMBER,
}
RANGE = {"median": NUMBER, "min": NUMBER, "max": NUMBER}
SCHEMAS: dict[str, dict[str, Any]] = {
    "overhead": {"suite": str, "steps": int, "warmup": int, "epoch_steps": int, "rounds": int, "settings": list,
                 "notes": list},
    "overhead setting": {"setting": str, "model": str, "batch_size": int, "precision": str, "clock": str, "rows": list},
    "overhead row": {"name": str, "group": str, "side": str, "step_ms_mean": NUMBER, "step_ms_median": NUMBER,
                     "vs_off": dict, "vs_peers": dict, "target": OPTIONAL_NUMBER, "met": OPTIONAL_BOOL,
                     "met_vs_peers": OPTIONAL_BOOL},
    "trainer_vs_plain": {"epochs": int, "rounds": int, "results": list},
    "trainer_vs_plain result": {"setting": str, "model": str, "batch_size": int, "train_images": (int, str),
                                "precision": str, "clock": str, "epoch_seconds": dict, "minimal_over_plain": dict,
                                "ours_over_plain": dict, "target": OPTIONAL_NUMBER},
    "time_to_accuracy": {"precision": str, "models": dict},
    "cpu_threads": {"steps": int, "rounds": int, "results": list},
    "cpu_threads result": {"config": str, "variant": str, "ms_per_step": list, "load_average": list},
    "gpu_check": {"dry_run": bool, "budget_s": NUMBER, "steps": list},
}  # fmt: skip


def check(value: Any, schema: dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming ``where`` and the key if ``value`` lacks a key of ``schema`` or has a wrong type."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    for key, kind in schema.items():
        if key not in value:
            raise ValueError(f"{where}: missing key {key!r} (expected keys: {sorted(schema)})")
        if (isinstance(value[key], bool) and kind in (int, NUMBER, OPTIONAL_NUMBER)) or not isinstance(
            value[key], kind
        ):
            raise ValueError(f"{where}: {key!r} should be {kind}, got {value[key]!r}")


def kind(payload: dict[str, Any]) -> str:
    return str(payload.get("benchmark", "")).split("-")[0]


def validate(payload: Any, where: str = "result") -> None:
    """Check a stored result against its schema (the envelope, then the benchmark's own keys)."""
    check(payload, {"benchmark": str, "command": str, "environment": dict}, where)
    check(payload["environment"], ENVIRONMENT, f"{where}: environment")
    if kind(payload) not in SCHEMAS:
        raise ValueError(f"{where}: unknown benchmark {payload['benchmark']!r} (known: {sorted(RENDER)})")
    check(payload, SCHEMAS[kind(payload)], where)
    for setting in payload.get("settings", []) if kind(payload) == "overhead" else []:
        check(setting, SCHEMAS["overhead setting"], f"{where}: setting")
        for row in setting["rows"]:
            check(row, SCHEMAS["overhead row"], f"{where}: {setting['setting']}")
            for ratio in (row["vs_off"], *row["vs_peers"].values()):
                check(ratio, RANGE, f"{where}: {row['name']}")
    for result in payload.get("results", []) if kind(payload) in ("trainer_vs_plain", "cpu_threads") else []:
        check(result, SCHEMAS[f"{kind(payload)} result"], where)


# --- Rendering. ---


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats with 3 decimals (4 significant digits under 1e-2)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)])


def ratio(r: dict[str, float]) -> str:
    """``1.043 (0.981-1.102)``: the median of the rounds' ratios and their range."""
    return f"{r['median']:.3f}" if r["min"] == r["max"] else f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})"


def verdict(met: bool, ranges: Iterable[dict[str, float]], limit: float) -> str:
    unsettled = any(r["min"] <= limit <= r["max"] for r in ranges)
    return ("met" if met else "**not met**") + (" (inside the rounds' range)" if unsettled else "")


def environment(payload: dict[str, Any]) -> str:
    e = payload["environment"]
    device = f"{e['cpu']}, {e['cores']} cores" + (f", {e['gpu']}" if e["gpu"] else "")
    start, end = e["load_average"]
    return (f"Measured {e['date']} on {device}; Python {e['python']}, torch {e['torch']}, lightning {e['lightning']},"
            f" {e['threads']} torch thread(s); 1-minute load average {start} at the start, {end} at the end;"
            f" the command took {e['cpu_seconds']:.0f} s of CPU time, {e['wall_seconds']:.0f} s of wall time."
            f" Command: `{payload['command']}`.")  # fmt: skip


def render_overhead(payload: dict[str, Any]) -> str:
    parts = []
    for s in payload["settings"]:
        groups = list(dict.fromkeys(row["group"] for row in s["rows"]))
        peers = any(row["vs_peers"] for row in s["rows"])
        rows = sorted(s["rows"], key=lambda row: groups.index(row["group"])) if peers else s["rows"]
        header = ["variant", "group", "ms/step: mean / median", "ratio to no callback", "ratio to each peer", "target"]
        table = []
        for row in rows:
            targets = []
            if row["target"] is not None:
                targets.append(
                    f"<= {row['target']}x no callback: {verdict(row['met'], [row['vs_off']], row['target'])}"
                )
            if row["met_vs_peers"] is not None:
                targets.append(f"<= each peer: {verdict(row['met_vs_peers'], row['vs_peers'].values(), 1.0)}")
            name = ("**ours** " if peers and row["side"] == "ours" else "") + f"`{row['name']}`"
            table.append([name, row["group"], f"{row['step_ms_mean']:.3f} / {row['step_ms_median']:.3f}",
                          "-" if row["side"] == "base" and row["name"] == "no callback" else ratio(row["vs_off"]),
                          "; ".join(f"{ratio(r)} to {peer}" for peer, r in row["vs_peers"].items()) or "-",
                          "; ".join(targets) or "-"])  # fmt: skip
        keep = [i for i, h in enumerate(header) if (h != "group" or peers) and (h != "ratio to each peer" or peers)]
        parts.append(
            f"`{s['setting']}`: `{s['model']}`, batch {s['batch_size']}, {s['precision']}, {s['clock']};"
            f" {payload['steps'] - payload['warmup']} timed steps per fit (epochs of {payload['epoch_steps']}),"
            f" rounds: {payload['rounds']}.\n\n"
            + markdown_table([header[i] for i in keep], [[cells[i] for i in keep] for cells in table])
        )
    return "\n\n".join([*parts, *(f"Note: {note}" for note in payload["notes"])])


def render_trainer_vs_plain(payload: dict[str, Any]) -> str:
    header = ["setting", "model", "batch, training images", "precision, clock", "s/epoch: plain / minimal / ours",
              "minimal / plain", "ours / plain", "target (ours / plain)"]  # fmt: skip
    rows = [
        [r["setting"], f"`{r['model']}`", f"{r['batch_size']}, {r['train_images']}", f"{r['precision']}, {r['clock']}",
         " / ".join(f"{r['epoch_seconds'][v]:.3f}" for v in ("plain", "lightning_minimal", "lightning_ours")),
         ratio(r["minimal_over_plain"]), ratio(r["ours_over_plain"]),
         "-" if r["target"] is None else f"<= {r['target']}: " + verdict(
             r["ours_over_plain"]["median"] <= r["target"], [r["ours_over_plain"]], r["target"])]
        for r in payload["results"]
    ]  # fmt: skip
    return (
        f"{payload['rounds']} rounds of {payload['epochs']} epochs per variant (the first epoch of each run"
        " dropped).\n\n" + markdown_table(header, rows)
    )


def render_time_to_accuracy(payload: dict[str, Any]) -> str:
    header = ["model", "seeds", "epochs", "test accuracy % (mean ± std)", "fit s (mean ± std)", "s/epoch",
              "validation target reached", "test target"]  # fmt: skip
    rows = []
    for name, entry in payload["models"].items():
        s = entry["summary"]
        reached = s["val_target_reached"] + ("" if s["val_target_seconds_median"] is None else
                                             f" runs, median {s['val_target_seconds_median']:.1f} s")  # fmt: skip
        rows.append(
            [
                name,
                s["seeds"],
                entry["recipe"]["epochs"],
                f"{100 * s['test_acc_mean']:.2f} ± {100 * s['test_acc_std']:.2f}",
                f"{s['fit_seconds_mean']:.1f} ± {s['fit_seconds_std']:.1f}",
                f"{s['seconds_per_epoch_mean']:.2f}",
                reached,
                f">= {100 * s['target']:.1f}%: " + ("met" if s["test_target_met"] else "**not met**"),
            ]
        )
    return f"Precision: {payload['precision']}.\n\n" + markdown_table(header, rows)  # fmt: skip


def render_cpu_threads(payload: dict[str, Any]) -> str:
    rows = [[r["config"], r["variant"], f"{statistics.median(r['ms_per_step']):.0f}",
             " ".join(f"{ms:.0f}" for ms in r["ms_per_step"]), " ".join(f"{load:.1f}" for load in r["load_average"])]
            for r in payload["results"]]  # fmt: skip
    header = ["config", "variant", "median ms/step", "each round (ms/step)", "1-minute load at each start"]
    return f"{payload['steps']} steps per run, {payload['rounds']} rounds.\n\n" + markdown_table(header, rows)


def render_gpu_check(payload: dict[str, Any]) -> str:
    met = {True: "met", False: "**not met**", None: "-"}
    rows = [[s["name"], s["status"], s["target"], met[s["met"]], f"{s['seconds']:.1f}",
             json.dumps({k: v for k, v in s["figures"].items() if k not in ("argv", "command")}) if s["figures"]
             else s.get("error", "")]
            for s in payload["steps"]]  # fmt: skip
    kind = "dry run on the CPU at toy sizes: targets not judged" if payload["dry_run"] else "full run"
    return (f"GPU check ({kind}), {payload['budget_s']:.0f} s budget.\n\n"
            + markdown_table(["step", "status", "target", "met", "seconds", "figures"], rows))  # fmt: skip


RENDER = {"overhead": render_overhead, "trainer_vs_plain": render_trainer_vs_plain, "cpu_threads": render_cpu_threads,
          "time_to_accuracy": render_time_to_accuracy, "gpu_check": render_gpu_check}  # fmt: skip


def render(payload: dict[str, Any]) -> str:
    """A result's tables, after its environment line."""
    validate(payload, payload.get("benchmark", "result"))
    return environment(payload) + "\n\n" + RENDER[kind(payload)](payload)


def load(path: Path) -> dict[str, Any]:
    payload = json.loads(path.read_text())
    validate(payload, path.name)
    return payload


def page(results: Path = RESULTS, template: Path = TEMPLATE) -> str:
    """The whole ``docs/benchmarks.md``: ``template`` with each ``<!-- result: NAME from: COMMAND -->`` line replaced
    by the rendering of ``results/NAME.json`` (or, with no such file, the command that makes it).

    Raises:
        ValueError: a stored result has no place in the template, or does not match its schema.
    """
    stored = {path.stem: load(path) for path in sorted(results.glob("*.json"))}
    marker = re.compile(r"^<!-- result: (\S+) from: (.+) -->$", re.MULTILINE)
    text = template.read_text()
    if unknown := sorted(set(stored) - {name for name, _ in marker.findall(text)}):
        raise ValueError(f"results/{unknown} have no '<!-- result: NAME from: COMMAND -->' line in {template.name}")

    def body(match: re.Match[str]) -> str:
        name, command = match.groups()
        return render(stored[name]) if name in stored else f"No stored run: `{command}` makes one."

    return marker.sub(body, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the rendering")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE} is not the rendering of {RESULTS}: run python benchmarks/tables.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
