"""What a person sees in TensorBoard's HPARAMS and CUSTOM SCALARS tabs (private; used by ``Classifier``).

Each run records its configuration as a TensorBoard *session* (hparams plugin ``session_start_info``): the model's and
data module's arguments, plus what tells runs apart and Lightning does not record: the run's full name, the callbacks
with their options, and the key trainer settings (:func:`run_hparams`). Values are written as TensorBoard shows them
best: numbers stay numbers; booleans, ``None``, lists and objects become short readable strings (a boolean written as
a number shows as ``0.0000`` / ``1.0000``).

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
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

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
