"""Everything TensorBoard-specific in the package: the HPARAMS record, custom-scalar layouts, text, histograms and the
one-event scalar writes of the callbacks. Other loggers never reach this module's writers (each helper skips them).

**HPARAMS** (written by ``Classifier``). Each run records its configuration as a TensorBoard *session* (hparams plugin
``session_start_info``): the model's and data module's arguments, plus what tells runs apart and Lightning does not
record: the run's full name, the callbacks with their options, and the key trainer settings (:func:`run_hparams`).
Values are written as TensorBoard shows them best: numbers stay numbers; booleans, ``None``, lists and objects become
short readable strings (a boolean written as a number shows as ``0.0000`` / ``1.0000``).

Which columns the HPARAMS tab shows first is decided by the *experiment* record (``_hparams_/experiment``): TensorBoard
takes the first one it finds, sorts its columns with ``differs`` first and shows the first five. A record written by a
run for itself alone marks no column as differing, so the tab opened on the first five names in alphabetical order.
Here :func:`write_summary_run` writes a record into the folders a person opens (the logger's ``save_dir`` and
``save_dir/name``, never the current working directory: see :func:`summary_folders`), built from the sessions of every
run found under that folder, with ``differs`` set for a value that varies or is missing in some runs, and the metric
columns limited to the real metrics. It is rebuilt (file replaced) each time a run starts, as a small run of its own
(no scalars, so no curves) that TensorBoard reads first (the opened folder itself, run ``.``). Each run also holds the
record as it stood at its start, so that Lightning's ``hp_metric`` record is not the one kept for the run. The same
small run carries the custom-scalar layout of the metrics family, so that the CUSTOM SCALARS tab opens on loss,
accuracy and learning rate: TensorBoard merges the layouts of all runs in run-name order, and ``.`` comes first.

A TensorBoard server that is already running keeps the experiment record it read first; reload the page after
restarting the server to see the columns of runs started since.

**Custom scalars** (the "readable at any size" rule). TensorBoard keeps ONE custom-scalar layout per run (the last one
written), so the callbacks of a run register their categories (:func:`register_custom_scalars`, in ``on_fit_start``)
and the merged layout is written once (:func:`write_custom_scalars`, in ``on_train_start``).

**Text and histograms.** A constant (a threshold, a decay) is written once as text (:func:`add_text`), not as a flat
chart; histograms are binned on the device and written raw (:func:`add_histograms`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

HParam = bool | int | float | str

#: Custom-scalar layout of the metrics every ``Classifier`` logs: {category: {chart: ["Multiline", [tag regexes]]}}.
METRICS_LAYOUT: dict[str, dict[str, list[Any]]] = {
    "metrics": {
        "loss: train (epoch mean), val, test": ["Multiline", [r"^train/loss_epoch$", r"^val/loss$", r"^test/loss$"]],
        "accuracy: train (epoch mean), val, test": ["Multiline", [r"^train/acc_epoch$", r"^val/acc$", r"^test/acc$"]],
        "training loss per logging step": ["Multiline", [r"^train/loss_step$"]],
        "learning rate": ["Multiline", [r"^lr-", r"^lr/"]],
    }
}

#: File-name suffix of the summary run's event file (no dot: tools split event file names on dots).
SUMMARY_SUFFIX = "-lightning-tricks-summary"
#: How many events of a run's file are read looking for its session record (written at ``setup``, so near the start).
_MAX_EVENTS_SCANNED = 5000


def readable(value: Any) -> HParam:
    """``value`` as TensorBoard's hparams can hold it and a person reads it: numbers as numbers, the rest as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return value
    return _text(value)


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (int, float, str)):
        return str(value)
    return type(value).__name__  # an object (a parser, a module, a function): its repr can be pages long


def _inside(value: Any, folder: str | None) -> bool:
    """Whether ``value`` is a path inside ``folder`` (e.g. a checkpoint folder in the run's own folder)."""
    if folder is None or not isinstance(value, (str, os.PathLike)) or "://" in str(value):
        return False
    try:
        return Path(value).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError):
        return False


def callback_label(callback: pl.Callback, run_dir: str | None = None) -> str:
    """``Name(option=value, ...)`` with the options that differ from the defaults of ``Name.__init__``.

    An option is found as the attribute of the same name, or with a leading underscore; options stored under other
    names are left out (Lightning callbacks have no common way to list their options). Paths inside ``run_dir`` (the
    run's own folder, e.g. ``ModelCheckpoint``'s resolved ``dirpath``) are left out too: they differ between runs by
    construction and would make every run look different.
    """
    options = []
    for name, parameter in inspect.signature(type(callback).__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        missing = object()
        value = getattr(callback, name, getattr(callback, f"_{name}", missing))
        if value is missing or (callable(value) and not isinstance(value, type)) or _inside(value, run_dir):
            continue
        with contextlib.suppress(Exception):  # a tensor or array compared with a default: keep it
            if parameter.default is not parameter.empty and bool(value == parameter.default):
                continue
        options.append(f"{name}={_text(value)}")
    return f"{type(callback).__name__}({', '.join(options)})"


def _strategy_name(strategy: pl.strategies.Strategy) -> str:
    name = type(strategy).__name__.removesuffix("Strategy") or type(strategy).__name__
    start_method = getattr(strategy, "_start_method", None)  # DDPStrategy: "popen" (ddp), "spawn" (ddp_spawn), ...
    return f"{name} ({start_method})" if start_method not in (None, "popen") else name


def run_hparams(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, HParam]:
    """Everything that defines a run, ready for TensorBoard's hparams (see the module docstring).

    Keys: ``run`` (the run's folder under the logger's ``save_dir``, e.g. ``default/version_0``), ``callbacks``
    (their class names), ``callback/<Name>`` (each with its non-default options), ``trainer/precision``,
    ``trainer/devices``, ``trainer/num_nodes``, ``trainer/strategy``, ``trainer/accumulate_grad_batches``,
    ``trainer/max_epochs``, ``trainer/max_steps``, ``batch_size`` (per process, from the data module), then the data
    module's and the module's own hyperparameters (as Lightning saved them).
    """
    params: dict[str, Any] = {}
    logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    run_dir = logger.log_dir if logger is not None else None
    if logger is not None:
        # The run's folder under the logger's save_dir (`default/version_0`, `dropout/dropout_0.5`): what TensorBoard
        # lists when opened on save_dir.
        params["run"] = Path(os.path.relpath(logger.log_dir, logger.save_dir)).as_posix()
    # Display and bookkeeping callbacks say nothing about the training (LightningCLI's SaveConfigCallback holds the
    # whole parser; the config it saves is in the run's config.yaml).
    from lightning.pytorch.cli import SaveConfigCallback  # jsonargparse: only where a run record is written

    shown = [c for c in trainer.callbacks if not isinstance(c, (ProgressBar, ModelSummary, SaveConfigCallback))]
    params["callbacks"] = ", ".join(type(c).__name__ for c in shown) or "none"
    for callback in shown:
        key = f"callback/{type(callback).__name__}"
        label = callback_label(callback, run_dir)
        params[key] = f"{params[key]}; {label}" if key in params else label
    params.update(
        {
            "trainer/precision": trainer.precision,
            "trainer/devices": trainer.num_devices,
            "trainer/num_nodes": trainer.num_nodes,
            "trainer/strategy": _strategy_name(trainer.strategy),
            "trainer/accumulate_grad_batches": trainer.accumulate_grad_batches,
            "trainer/max_epochs": trainer.max_epochs,
            "trainer/max_steps": trainer.max_steps,
        }
    )
    datamodule = trainer.datamodule
    if datamodule is not None:
        batch_size = getattr(datamodule, "batch_size", None)
        if isinstance(batch_size, int):
            params["batch_size"] = batch_size
        if getattr(datamodule, "_log_hyperparams", False):
            params.update(datamodule.hparams_initial)
    if module._log_hyperparams:
        params.update(module.hparams_initial)
    # Leave out LightningCLI's internal entries (`_class_path`, `_instantiator`), as Lightning does for the first.
    return {key: readable(value) for key, value in params.items() if not key.startswith("_")}


def _value_pb(value: HParam) -> Any:
    from google.protobuf import struct_pb2

    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


def write_session(writer: Any, params: Mapping[str, HParam]) -> None:
    """Write the run's session records (start with ``params``, end with success) to a TensorBoard file writer."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(group_name="")
    for key, value in params.items():
        start.hparams[key].CopyFrom(_value_pb(value))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
    for tag, data in (
        (metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        (metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ):
        smd = metadata.create_summary_metadata(data)
        writer.add_summary(Summary(value=[Summary.Value(tag=tag, metadata=smd, tensor=metadata.NULL_TENSOR)]))


def read_sessions(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The session records of every run under ``folder``: ``{run folder: {name: google.protobuf.Value}}``.

    Reads each event file with TensorBoard's own ``EventFileLoader`` and stops at the session record (written at
    ``setup``, so among the first events); summary runs written by :func:`write_summary_run` are skipped.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    sessions: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder).rglob("*tfevents*")):
        if path.name.endswith(SUMMARY_SUFFIX) or str(path.parent) in sessions:
            continue
        with contextlib.suppress(Exception):  # a file being written or truncated: skip what cannot be read
            for count, event in enumerate(EventFileLoader(str(path)).Load()):
                found = [v for v in event.summary.value if v.tag == metadata.SESSION_START_INFO_TAG]
                if found:
                    content = found[0].metadata.plugin_data.content
                    start = metadata.parse_session_start_info_plugin_data(content)
                    sessions[str(path.parent)] = dict(start.hparams)
                    break
                if count >= _MAX_EVENTS_SCANNED:
                    break
    return sessions


def hparam_infos(sessions: Iterable[Mapping[str, Any]], first: Sequence[str] = ()) -> list[Any]:
    """TensorBoard ``HParamInfo`` of every hparam of ``sessions``: type and domain as TensorBoard computes them, and
    ``differs`` when the value varies or is missing in some sessions; the differing ones first, then ``first``."""
    from tensorboard.plugins.hparams import api_pb2

    sessions = list(sessions)
    names = list(dict.fromkeys(name for session in sessions for name in session))
    infos = []
    for name in names:
        values = [session[name] for session in sessions if name in session]
        kinds = {value.WhichOneof("kind") for value in values}
        info = api_pb2.HParamInfo(name=name)
        if kinds == {"number_value"}:
            info.type = api_pb2.DATA_TYPE_FLOAT64
            numbers = [value.number_value for value in values]
            info.domain_interval.min_value, info.domain_interval.max_value = min(numbers), max(numbers)
            distinct: set[Any] = set(numbers)
        elif kinds == {"bool_value"}:
            info.type = api_pb2.DATA_TYPE_BOOL
            distinct = {value.bool_value for value in values}
            info.domain_discrete.extend(distinct)
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            distinct = {_value_text(value) for value in values}
            info.domain_discrete.extend(sorted(distinct))
        info.differs = len(distinct) > 1 or len(values) < len(sessions)
        infos.append(info)
    rank = {name: i for i, name in enumerate(first)}
    return sorted(infos, key=lambda info: (not info.differs, rank.get(info.name, len(rank)), info.name))


def _value_text(value: Any) -> str:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return f"{value.number_value:g}"
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return value.string_value


def experiment_summary(sessions: Iterable[Mapping[str, Any]], metrics: Sequence[str], first: Sequence[str] = ()) -> Any:
    """The hparams experiment record (a ``Summary``) of ``sessions`` (see :func:`hparam_infos`), listing ``metrics``."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    experiment = api_pb2.Experiment(
        hparam_infos=hparam_infos(sessions, first),
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics],
    )
    smd = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment))
    return Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=smd)])


def write_summary_run(folder: str | Path, metrics: Sequence[str], first: Sequence[str] = ()) -> Path:
    """(Re)write the summary run in ``folder``: the hparams experiment of every session under it, and the metrics
    custom-scalar layout (see the module docstring). Returns the event file written."""
    from torch.utils.tensorboard import FileWriter
    from torch.utils.tensorboard.summary import custom_scalars

    folder = Path(folder)
    summary = experiment_summary(read_sessions(folder).values(), metrics, first)
    for old in folder.glob(f"*tfevents*{SUMMARY_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):  # another process replaced it first
            old.unlink()
    writer = FileWriter(str(folder), filename_suffix=SUMMARY_SUFFIX)
    try:
        writer.add_summary(summary)
        writer.add_summary(custom_scalars(METRICS_LAYOUT))
    finally:
        writer.close()
    return max(folder.glob(f"*tfevents*{SUMMARY_SUFFIX}"), key=os.path.getmtime)


def summary_folders(logger: TensorBoardLogger) -> list[str]:
    """Where the summary run goes, widest first: ``save_dir`` and ``save_dir/name``, local folders only.

    The current working directory is left out: it is Lightning's default ``save_dir`` (runs in ``./lightning_logs``),
    usually a project folder, which should get no event file and whose whole tree should not be searched. Remote
    folders (``s3://...``) are left out too; TensorBoard then computes the columns itself (without metrics first).
    """
    cwd = Path.cwd().resolve()
    folders = []
    for folder in dict.fromkeys(str(folder) for folder in (logger.save_dir, logger.root_dir) if folder):
        if "://" not in folder and Path(folder).resolve() != cwd:
            folders.append(folder)
    return folders


def log_run_record(
    trainer: pl.Trainer, module: pl.LightningModule, metrics: Sequence[str], params: Mapping[str, HParam]
) -> None:
    """Write the run's session (``params``) to each TensorBoard logger, then the summary run of the folders a person
    opens (:func:`summary_folders`). Rank zero only.

    The run also gets the experiment record of ``save_dir`` as it stands now: TensorBoard keeps the first experiment
    record of a run, and this one (with the real metrics) must come before the ``hp_metric`` record that Lightning's
    ``TensorBoardLogger(default_hp_metric=True)`` writes after ``setup``.
    """
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        writer = logger.experiment._get_file_writer()  # the writer Lightning's log_hyperparams uses
        write_session(writer, params)
        writer.flush()
        local = summary_folders(logger)
        sessions = read_sessions(local[0]).values() if local else [{k: _value_pb(v) for k, v in params.items()}]
        writer.add_summary(experiment_summary(sessions, metrics, list(params)))
        for folder in local:
            write_summary_run(folder, metrics, first=list(params))


# ---------------------------------------------------------------------------------------------- the callbacks' extras
def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` of the trainer, on global rank zero; ``[]`` otherwise."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def event_file_writer(logger: Any) -> Any:
    """The event file writer behind a ``TensorBoardLogger`` using torch's ``SummaryWriter``; ``None`` for any other
    logger, and for a subclass with its own ``log_metrics`` (which must see every value)."""
    if not isinstance(logger, TensorBoardLogger) or type(logger).log_metrics is not TensorBoardLogger.log_metrics:
        return None
    get = getattr(logger.experiment, "_get_file_writer", None)  # torch.utils.tensorboard.SummaryWriter
    return get() if callable(get) else None


def write_scalars(logger: TensorBoardLogger, writer: Any, metrics: Mapping[str, float], step: int) -> None:
    """Write host floats as ONE event (a ``Summary`` with one value per key) to ``writer``, the
    :func:`event_file_writer` of ``logger``, with the logger's prefix applied as its own ``log_metrics`` does.

    TensorBoard reads it as the one event per key that ``log_metrics`` writes (the same tags, steps and values), for
    a fraction of the cost when a callback logs dozens of values at once.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    prefixed = _add_prefix(dict(metrics), logger._prefix, logger.LOGGER_JOIN_CHAR)
    values = [Summary.Value(tag=key, simple_value=float(value)) for key, value in prefixed.items()]
    writer.add_summary(Summary(value=values), step)


def histogram_stats(tensors: Sequence[Tensor], bins: int = 64) -> Tensor:
    """Histograms of many tensors computed on their device, as one ``[len(tensors), 5 + bins]`` float tensor.

    Row ``i`` holds ``min, max, count, sum, sum of squares`` of ``tensors[i]`` followed by the counts of ``bins``
    equal-width buckets spanning ``[min, max]``. Non-finite values are left out. No host synchronization
    (``torch.histc`` of the values rescaled to ``[0, 1]``, so its bounds are Python constants).
    """
    rows = []
    for tensor in tensors:
        values = tensor.detach().reshape(-1).float()
        finite = torch.isfinite(values)
        inf = torch.tensor(math.inf, device=values.device)
        low, high = torch.where(finite, values, inf).min(), torch.where(finite, values, -inf).max()
        low, high = torch.where(finite.any(), low, 0.0), torch.where(finite.any(), high, 0.0)  # all non-finite
        kept = torch.where(finite, values, 0.0)
        # Non-finite values go to -1, outside histc's [0, 1]: they are not counted.
        scaled = torch.where(finite, (kept - low) / (high - low).clamp_min(torch.finfo(torch.float32).tiny), -1.0)
        counts = torch.histc(scaled, bins=bins, min=0.0, max=1.0)
        head = torch.stack([low, high, finite.sum().float(), kept.sum(), kept.square().sum()])
        rows.append(torch.cat([head, counts]))
    return torch.stack(rows)


def add_histograms(trainer: pl.Trainer, tensors: Mapping[str, Tensor], step: int, bins: int = 64) -> bool:
    """Write ``{tag: tensor}`` as TensorBoard histograms at ``step``; returns ``False`` (and does nothing) without
    TensorBoard.

    The buckets are counted on the tensors' device (:func:`histogram_stats`) and copied to the host in ONE transfer
    (a deliberate sync: call it only on the rare histogram steps), then written with ``add_histogram_raw``, instead of
    ``SummaryWriter.add_histogram``, which copies each tensor to the host and bins it with NumPy.
    """
    writers = tensorboard_writers(trainer)
    if not writers or not tensors:
        return bool(writers)
    devices: dict[torch.device, list[str]] = {}
    for tag, tensor in tensors.items():
        devices.setdefault(tensor.device, []).append(tag)
    for tags in devices.values():
        table = histogram_stats([tensors[tag] for tag in tags], bins).cpu().tolist()  # the one sync per device
        for tag, row in zip(tags, table, strict=True):
            low, high, num, total, total_sq = row[:5]
            width = (high - low) / bins
            limits = [low + width * (i + 1) for i in range(bins)]
            for writer in writers:
                writer.add_histogram_raw(tag, low, high, num, total, total_sq, limits, row[5:], global_step=step)
    return True


def add_text(trainer: pl.Trainer, tag: str, text: str) -> bool:
    """Write a constant (a threshold, a decay) once as TensorBoard text at step 0, instead of a flat chart."""
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_text(tag, text, global_step=0)
    return bool(writers)


#: Where each family's category goes in the one layout of a run (others follow in registration order).
CATEGORY_ORDER = (
    "gradient health",
    "gradient norm per parameter",
    "weight norm per parameter",
    "update / weight ratio per parameter",
    "activations",
)
_LAYOUT = "_lightning_tricks_layout"  # attributes of a SummaryWriter: its run's layout, and what was written
_WRITTEN = "_lightning_tricks_layout_written"


def register_custom_scalars(trainer: pl.Trainer, category: str, charts: Mapping[str, Sequence[str]]) -> bool:
    """Add charts to the custom-scalar layout of the run (written later by :func:`write_custom_scalars`).

    Registrations are merged per ``SummaryWriter``: charts of the same title in the same category get the union of
    their tag regexes. Each chart is a ``Multiline`` of every tag matching one of its regexes. Titles hold nothing
    run-specific (no threshold value): TensorBoard merges the layouts of all runs by category and chart title, so such
    a title would make one chart per run. Returns ``False`` (and does nothing) without a ``TensorBoardLogger``.
    """
    writers = tensorboard_writers(trainer)
    for writer in writers:
        layout = writer.__dict__.setdefault(_LAYOUT, {}).setdefault(category, {})
        for title, regexes in charts.items():
            merged = layout.setdefault(title, [])
            merged.extend(r for r in regexes if r not in merged)
    return bool(writers)


def write_custom_scalars(trainer: pl.Trainer) -> bool:
    """Write the merged layout of each TensorBoard run once (call it in ``on_train_start``, after every callback
    registered in ``on_fit_start``; later calls write again only if the layout grew). Returns whether a layout was
    written now."""
    written = False
    for writer in tensorboard_writers(trainer):
        layout = writer.__dict__.get(_LAYOUT, {})
        snapshot = repr(layout)
        if not layout or writer.__dict__.get(_WRITTEN) == snapshot:
            continue
        rank = {c: CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else len(CATEGORY_ORDER) for c in layout}
        proto = {
            category: {title: ["Multiline", list(regexes)] for title, regexes in layout[category].items()}
            for category in sorted(layout, key=rank.__getitem__)  # stable: unknown categories keep their order
        }
        writer.add_custom_scalars(proto)
        writer.__dict__[_WRITTEN] = snapshot
        written = True
    return written


_REGEX_SPECIALS = re.compile(r"([.^$*+?{}\[\]\\|()])")


def tag_regex(tags: Iterable[str]) -> str:
    """One regex matching exactly these tags (labels hold ``(``, ``.`` and ``→``). Only the metacharacters common to
    Python's and JavaScript's regexes are escaped (``re.escape`` also escapes spaces, which a JavaScript regex with
    the unicode flag rejects)."""
    return "^(" + "|".join(_REGEX_SPECIALS.sub(r"\\\1", t) for t in tags) + ")$"
