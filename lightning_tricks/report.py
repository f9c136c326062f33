"""``lightning-tricks report``: TensorBoard runs -> one PNG of curves per experiment, plus a markdown table.

Each ``RUN_DIR`` is one experiment: a folder whose sub-folders hold TensorBoard event files, one sub-folder per run
(``logs/dropout/dropout_0.5``) or per seed of a variant (``logs/dropout/dropout_0.5/seed1``). A folder that holds event
files itself is one run. For every experiment the command writes ``OUT_DIR/<experiment>.png`` (one panel per chosen
tag, the variants overlaid in one colour each; several seeds of a variant drawn as their mean with a band of ± one
standard deviation) and ``OUT_DIR/<experiment>.md`` (one row per variant: the last logged value of each table tag,
mean ± std over seeds, and the best ``val/acc`` with its epoch)::

    lightning-tricks report logs/dropout logs/normalization --output docs/figures
    python -m lightning_tricks.report logs/dropout --output docs/figures --tags train/loss_epoch val/loss val/acc

What it adds to TensorBoard: the event files are read with TensorBoard's own ``EventAccumulator`` (every scalar point,
no down-sampling); the x-axis is the epoch Lightning logged with each point (its ``epoch`` scalar, shown 1-based) or
the logging step (``--x step``). The figure is drawn with matplotlib's object API on the Agg canvas (no display, no
``pyplot`` state), so it runs headless. Runs appear in the order they were written (first event time), which is the
order the example scripts define their variants. Non-finite values (a diverged run) leave gaps; a variant whose whole
curve is non-finite says so in the legend.
"""

from __future__ import annotations

import argparse
import bisect
import io
import math
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from lightning_tricks._validation import check_choice

#: Tags drawn by default (those present in the runs).
DEFAULT_TAGS: tuple[str, ...] = ("train/loss_epoch", "val/loss", "val/acc")
#: Tags whose last value makes the columns of the table by default (those present in the runs).
DEFAULT_TABLE_TAGS: tuple[str, ...] = ("train/loss_epoch", "train/acc_epoch", "val/loss", "val/acc", "test/acc")
_SEED = re.compile(r"seed\d+")


@dataclass
class Run:
    """One TensorBoard run: its variant (and seed) name and every scalar it logged as ``(step, value)`` pairs."""

    variant: str
    seed: str
    path: Path
    started: float
    scalars: dict[str, list[tuple[int, float]]] = field(repr=False)

    def curve(self, tag: str, x: str = "epoch") -> tuple[list[float], list[float]]:
        """The points of ``tag`` as ``(xs, values)``: x is the 1-based epoch logged with the point, or its step.

        Lightning logs an ``epoch`` scalar with every ``log_metrics`` call; a point's epoch is the latest one logged at
        or before its step. Without that scalar, points are numbered 1, 2, ...
        """
        points = self.scalars.get(tag, [])
        epochs = self.scalars.get("epoch", [])
        if x == "step":
            xs = [float(step) for step, _ in points]
        elif epochs:
            epoch_at = _epoch_lookup(epochs)
            xs = [float(epoch_at(step) + 1) for step, _ in points]
        else:
            xs = [float(i) for i in range(1, len(points) + 1)]
        return xs, [value for _, value in points]

    def last(self, tag: str) -> float:
        """The last value logged under ``tag`` (NaN if none)."""
        points = self.scalars.get(tag)
        return points[-1][1] if points else math.nan


def _epoch_lookup(epochs: list[tuple[int, float]]) -> Callable[[int], int]:
    """``step -> epoch``: the epoch logged at the latest step ``<= step`` (the first one for earlier steps).

    Lightning logs ``epoch`` with every logging call, so there are as many of them as logged steps: a binary search.
    """
    ordered = sorted(epochs, key=lambda point: point[0])  # stable: the last one written wins at equal steps
    steps = [step for step, _ in ordered]

    def epoch_at(step: int) -> int:
        return int(ordered[max(bisect.bisect_right(steps, step) - 1, 0)][1])

    return epoch_at


def load_run(path: Path, root: Path) -> Run:
    """Read every scalar of the run in ``path`` with TensorBoard's ``EventAccumulator`` (no down-sampling)."""
    accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0})
    accumulator.Reload()
    scalars = {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()[SCALARS]
    }
    parts = path.relative_to(root).parts if path != root else (path.name,)
    seed = ""
    if len(parts) > 1 and _SEED.fullmatch(parts[-1]):
        parts, seed = parts[:-1], parts[-1]
    try:
        started = accumulator.FirstEventTimestamp()
    except ValueError:  # no event at all
        started = math.inf
    return Run(variant="/".join(parts), seed=seed, path=path, started=started, scalars=scalars)


def load_experiment(run_dir: str | Path) -> list[Run]:
    """Every run under ``run_dir`` that logged scalars, in the order they were written.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist or holds no event file with scalars.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"RUN_DIR {str(root)!r} is not a folder. Pass a folder of TensorBoard runs (logs/<name>)."
        )
    folders = sorted({file.parent for file in root.rglob("events.out.tfevents.*")})
    runs = [run for run in (load_run(folder, root) for folder in folders) if run.scalars]
    if not runs:
        raise FileNotFoundError(
            f"RUN_DIR {str(root)!r} holds no TensorBoard event file with scalars (looked for events.out.tfevents.* "
            "in it and its sub-folders). Pass the folder a run logged to, e.g. logs/<experiment>."
        )
    return sorted(runs, key=lambda run: (run.started, str(run.path)))


def by_variant(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The runs grouped by variant, in first-run order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.variant, []).append(run)
    return groups


def mean_std(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``"m"`` for one value, ``"m ± s"`` for several; non-finite values are counted, never averaged in."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "nan" if values else "-"
    if len(finite) < len(values):
        return f"{fmt.format(statistics.fmean(finite))} ({len(values) - len(finite)} nan)"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def _best_epoch(run: Run, tag: str) -> tuple[float, float]:
    xs, values = run.curve(tag)
    finite = [(value, x) for x, value in zip(xs, values, strict=True) if math.isfinite(value)]
    if not finite:
        return math.nan, math.nan
    best = max(finite, key=lambda pair: pair[0])  # the first epoch of the best value
    return best[0], best[1]


def markdown_table(runs: Sequence[Run], tags: Sequence[str], best: str | None = "val/acc") -> str:
    """One row per variant: the last value of each of ``tags`` and the best ``best`` (epoch), mean ± std over seeds."""
    groups = by_variant(runs)
    seeds = max(len(group) for group in groups.values())
    header = ["variant", *(f"last {tag}" for tag in tags)]
    if best is not None:
        header.append(f"best {best} (epoch)")
    if seeds > 1:
        header.append("seeds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in groups.items():
        cells = [name, *(mean_std([run.last(tag) for run in group]) for tag in tags)]
        if best is not None:
            pairs = [_best_epoch(run, best) for run in group]
            epochs = mean_std([epoch for _, epoch in pairs], "{:.0f}")
            cells.append(f"{mean_std([value for value, _ in pairs])} ({epochs})")
        if seeds > 1:
            cells.append(str(len(group)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _band(group: Sequence[Run], tag: str, x: str) -> tuple[list[float], list[float], list[float]]:
    """x, mean and std (0 for a single run) of ``tag`` over the runs of one variant, aligned on x.

    Points of one run that share an x (a per-step tag drawn by epoch) are averaged first, so the band is the spread
    between runs (seeds), never within one.
    """
    at: dict[float, list[float]] = {}
    for run in group:
        per_run: dict[float, list[float]] = {}
        for xi, value in zip(*run.curve(tag, x), strict=True):
            per_run.setdefault(xi, []).append(value if math.isfinite(value) else math.nan)
        for xi, values in per_run.items():
            at.setdefault(xi, []).append(statistics.fmean(values))  # NaN if any is NaN
    xs = sorted(at)
    means = [statistics.fmean(at[xi]) if all(math.isfinite(v) for v in at[xi]) else math.nan for xi in xs]
    stds = [
        statistics.stdev(at[xi]) if len(at[xi]) > 1 and math.isfinite(m) else 0.0
        for xi, m in zip(xs, means, strict=True)
    ]
    return xs, means, stds


def _profile(group: Sequence[Run], pattern: re.Pattern[str]) -> tuple[list[float], list[float]]:
    """Layer index and value (mean over the runs) of every tag matching ``pattern`` at its first logged step.

    The pattern's first group names the layer; layers are numbered 1, 2, ... in the order of that group (numeric when
    it is a number: ``net.1``, ``net.3``, ... are layers 1, 2, ...).
    """
    at: dict[str, list[float]] = {}
    for run in group:
        for tag, points in run.scalars.items():
            match = pattern.fullmatch(tag)
            if match and points:
                value = points[0][1]
                at.setdefault(match.group(1), []).append(value if math.isfinite(value) else math.nan)
    numeric = all(layer.isdigit() for layer in at)
    layers = sorted(at, key=lambda layer: int(layer) if numeric else layer)
    return [float(i) for i in range(1, len(layers) + 1)], [statistics.fmean(at[layer]) for layer in layers]


def _label(name: str, group: Sequence[Run]) -> str:
    return name if len(group) == 1 else f"{name} (mean ± std, {len(group)} seeds)"


def _draw_curves(axis: Any, groups: dict[str, list[Run]], tag: str, x: str) -> None:
    diverged = []
    for colour, (name, group) in zip(_colours(groups), groups.items(), strict=True):
        xs, means, stds = _band(group, tag, x)
        if not xs:
            continue
        if not any(math.isfinite(m) for m in means):
            diverged.append(name)  # nothing to draw: say so in the panel
        axis.plot(xs, means, color=colour, marker="." if len(xs) < 30 else None, label=_label(name, group))
        if len(group) > 1:
            lower = [m - s for m, s in zip(means, stds, strict=True)]
            upper = [m + s for m, s in zip(means, stds, strict=True)]
            axis.fill_between(xs, lower, upper, color=colour, alpha=0.2, linewidth=0)
    if diverged:
        text = "non-finite (diverged): " + ", ".join(diverged)
        axis.text(0.02, 0.02, text, transform=axis.transAxes, fontsize=7, color="0.3", va="bottom")
    axis.set_title(tag, fontsize=10)
    axis.set_xlabel("epoch" if x == "epoch" else "step")
    if tag.endswith("loss") or "loss_" in tag:
        finite = [v for group in groups.values() for run in group for v in run.curve(tag)[1] if math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 30:
            axis.set_yscale("log")  # a loss spanning decades: the small differences would be flat otherwise


def _draw_profile(axis: Any, groups: dict[str, list[Run]], profile: str) -> None:
    pattern = re.compile(profile)
    finite: list[float] = []
    for colour, (name, group) in zip(_colours(groups), groups.items(), strict=True):
        xs, values = _profile(group, pattern)
        finite += [v for v in values if math.isfinite(v)]
        if xs:
            axis.plot(xs, values, color=colour, marker=".", label=_label(name, group))
    if finite and min(finite) > 0 and max(finite) / min(finite) > 30:
        axis.set_yscale("log")  # scales that grow or shrink geometrically through depth
    readable = re.sub(r"\((?:[^()\\]|\\.)*\)", "<layer>", profile.strip("^$")).replace("\\", "")
    axis.set_title(f"{readable} at the first logged step", fontsize=9)
    axis.set_xlabel("layer (in order)")


def _colours(groups: dict[str, list[Run]]) -> list[str]:
    return [f"C{i % 10}" for i in range(len(groups))]


def plot_experiment(
    runs: Sequence[Run],
    tags: Sequence[str],
    output: Path,
    *,
    title: str,
    note: str = "",
    x: str = "epoch",
    profile: str | None = None,
) -> Path:
    """Draw one panel per tag (variants overlaid, mean ± std band over seeds) and save the PNG to ``output``.

    With ``profile`` (a regular expression whose first group is the layer), a first panel shows the value of every
    matching tag at its first logged step against the layer: e.g. the activation scale through depth at step 0.
    """
    from matplotlib.figure import Figure  # imported here: `report` is the only part of the package that draws
    from PIL import Image  # matplotlib's own dependency

    groups = by_variant(runs)
    panels = ([profile] if profile else []) + list(tags)
    figure = Figure(figsize=(4.2 * len(panels), 3.4 if not note else 3.7), dpi=80, layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for i, axis in enumerate(axes):
        if profile and i == 0:
            _draw_profile(axis, groups, profile)
        else:
            _draw_curves(axis, groups, panels[i], x)
        axis.grid(alpha=0.3)
    legend: dict[str, Any] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=8, frameon=False)
    figure.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    output.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    # A 128-colour palette: a third of the file size for line plots (figures are committed to the repository), with
    # no visible change.
    Image.open(buffer).convert("RGB").quantize(colors=128).save(output, format="png", optimize=True)
    return output


def report(
    run_dirs: Sequence[str | Path],
    output: str | Path,
    *,
    tags: Sequence[str] | None = None,
    table_tags: Sequence[str] | None = None,
    x: str = "epoch",
    note: str = "",
    variants: str | None = None,
    name: str | None = None,
    profile: str | None = None,
) -> list[Path]:
    """Write ``<experiment>.png`` and ``<experiment>.md`` into ``output`` for every folder of ``run_dirs``.

    Args:
        run_dirs: experiment folders (see the module docstring).
        output: folder for the figures and tables (created).
        tags: scalar tags to draw, one panel each (default: those of :data:`DEFAULT_TAGS` the runs have).
        table_tags: tags whose last values make the table (default: those of :data:`DEFAULT_TABLE_TAGS` present).
        x: ``"epoch"`` or ``"step"``.
        note: a line printed under the figure's title (e.g. the run size).
        variants: a regular expression; only the variants whose name matches it in full are drawn and tabled.
        name: the file stem and title (default: the folder's name); only with a single ``RUN_DIR``.
        profile: a regular expression whose first group is a layer (e.g. ``activation/net\\.(\\d+) [^/]*/std``): adds a
            first panel of each matching tag's value at its first logged step, against the layer.

    Returns:
        The written files, figure then table for each experiment.

    Raises:
        ValueError: ``x`` is not ``"epoch"`` or ``"step"``, a requested tag was logged by no run, ``variants``
            matches no run, or ``name`` is given with several ``RUN_DIR``.
        FileNotFoundError: a ``RUN_DIR`` that does not exist or holds no scalars.
    """
    check_choice("x", x, ("epoch", "step"))
    if profile is not None:
        try:
            groups = re.compile(profile).groups
        except re.error as error:
            raise ValueError(f"`profile` {profile!r} is not a regular expression ({error}).") from error
        if groups < 1:
            raise ValueError(
                f"`profile` {profile!r} needs a group for the layer, e.g. 'activation/net\\.(\\d+) [^/]*/std'."
            )
    if name is not None and len(run_dirs) != 1:
        raise ValueError(f"`name` ({name!r}) names one figure, but {len(run_dirs)} RUN_DIR were given: pass one.")
    written = []
    for run_dir in run_dirs:
        runs = load_experiment(run_dir)
        if variants is not None:
            found = sorted({run.variant for run in runs})
            runs = [run for run in runs if re.fullmatch(variants, run.variant)]
            if not runs:
                raise ValueError(
                    f"`variants`: {variants!r} matches none of the variants under {str(run_dir)!r}: {found}."
                )
        present = {tag for run in runs for tag in run.scalars}
        for option, wanted in (("tags", tags), ("table_tags", table_tags)):
            missing = [tag for tag in wanted or () if tag not in present]
            if missing:
                shown = ", ".join(sorted(present)[:40])
                raise ValueError(f"`{option}`: {missing} logged by no run under {str(run_dir)!r}; its tags: {shown}.")
        if profile is not None and not any(re.fullmatch(profile, tag) for tag in present):
            raise ValueError(f"`profile` {profile!r} matches no tag logged under {str(run_dir)!r}.")
        drawn = list(tags) if tags else [tag for tag in DEFAULT_TAGS if tag in present]
        columns = list(table_tags) if table_tags else [tag for tag in DEFAULT_TABLE_TAGS if tag in present]
        if not drawn:
            raise ValueError(
                f"None of the default tags {list(DEFAULT_TAGS)} is logged under {str(run_dir)!r}: pass --tags."
            )
        stem = name or Path(run_dir).resolve().name
        figure = plot_experiment(runs, drawn, Path(output, f"{stem}.png"), title=stem, note=note, x=x, profile=profile)
        table = markdown_table(runs, columns, best="val/acc" if "val/acc" in present else None)
        table_path = Path(output, f"{stem}.md")
        table_path.write_text(table + "\n")
        written += [figure, table_path]
    return written


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Draw TensorBoard runs as one PNG per experiment (variants overlaid, mean ± std over seeds) and "
        "write a markdown table of their last values.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="experiment folder(s): logs/<experiment>")
    parser.add_argument("--output", "-o", required=True, metavar="OUT_DIR", help="folder for <experiment>.png / .md")
    parser.add_argument("--tags", nargs="+", default=None, help=f"tags to draw (default: {' '.join(DEFAULT_TAGS)})")
    parser.add_argument("--table-tags", nargs="+", default=None, help="tags whose last values fill the table")
    parser.add_argument("--x", choices=("epoch", "step"), default="epoch", help="x-axis of the curves")
    parser.add_argument("--note", default="", help="a line under the figure title, e.g. the size of the runs")
    parser.add_argument("--variants", default=None, metavar="REGEX", help="draw only the variants matching REGEX")
    parser.add_argument("--name", default=None, help="file stem and title (one RUN_DIR only; default: its name)")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="REGEX",
        help="add a panel of the tags matching REGEX (its group 1 is the layer) at their first step, by layer",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> list[Path]:
    """Command-line entry point (``lightning-tricks report`` and ``python -m lightning_tricks.report``)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        written = report(
            args.run_dirs,
            args.output,
            tags=args.tags,
            table_tags=args.table_tags,
            x=args.x,
            note=args.note,
            variants=args.variants,
            name=args.name,
            profile=args.profile,
        )
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:], prog="python -m lightning_tricks.report")
