"""CPU thread policy shared by the CLI, the example scripts and the benchmarks: how many torch threads a run uses.

torch starts one OpenMP thread per core. For this package's small models on a small, shared CPU that is the slow
choice: on the 2-core VM of ``benchmarks/RESULTS.md`` (section 8, load 6-10), a training step of the main job's
small ResNet took 313 ms with one thread, 1975 ms with two, and 396 ms with two and passive OpenMP waiting
(``OMP_WAIT_POLICY=PASSIVE``); the MLP recipe 122, 1032 and 136 ms. (An OpenMP team waits at a barrier for its
slowest thread, and on a shared core that thread is often descheduled while the other spins.) Those numbers come from
a 2-core machine only, so the default changes torch's choice only there; on more cores torch's own default stands.

The order of precedence, highest first: an explicit request (the CLI's ``--threads N``, a script's ``--threads N``),
then the environment torch itself reads (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``), then :func:`default_threads`.

This module imports torch only inside :func:`apply_threads`, so it can be imported before torch loads.
"""

from __future__ import annotations

import os
from collections.abc import Callable

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
SMALL_MACHINE_CORES = 2  # the largest core count the default of 1 thread was measured on
_announced = False


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int | None:
    """1 on a machine with at most :data:`SMALL_MACHINE_CORES` usable cores; ``None`` (torch's default) otherwise."""
    cores = usable_cores() if cores is None else cores
    return 1 if cores <= SMALL_MACHINE_CORES else None


def choose_threads(requested: int | None = None) -> tuple[int | None, str]:
    """The thread count to set (``None``: leave torch's) and why, following the module's order of precedence.

    Args:
        requested: an explicit request: a positive count, ``0`` for torch's own default, ``None`` for no request.

    Raises:
        ValueError: ``requested`` is negative or not an int.
    """
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
            raise ValueError(f"Expected `threads` to be an int >= 1 (or 0 for torch's default), but got {requested!r}.")
        return (requested or None), ("--threads" if requested else "--threads 0: torch's default")
    for name in THREAD_ENV_VARS:
        if os.environ.get(name):
            return None, f"{name}={os.environ[name]} in the environment"
    cores = usable_cores()
    threads = default_threads(cores)
    if threads is None:
        return None, f"torch's default on {cores} cores"
    return threads, (
        f"the default on a machine with {cores} cores: faster than {cores} here, see benchmarks/RESULTS.md; "
        f"override with --threads N or OMP_NUM_THREADS"
    )


def apply_threads(requested: int | None = None, announce: Callable[[str], object] | None = None) -> int:
    """Set torch's intra-op thread count by :func:`choose_threads`; announce the choice once per process.

    The count is also exported as ``OMP_NUM_THREADS`` when this policy picks it, so processes started later (a
    DDP launch's ranks, data-loader workers) follow it instead of starting one thread per core; Lightning's launchers
    then leave it as it is (``lightning.fabric.utilities.distributed._set_num_threads_if_needed``).

    Args:
        requested: as for :func:`choose_threads`.
        announce: called once per process with a one-line message (e.g. ``print`` or ``rank_zero_info``).

    Returns:
        The number of threads torch now uses.
    """
    global _announced
    import torch

    threads, why = choose_threads(requested)
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if announce is not None and not _announced:
        _announced = True
        announce(f"CPU threads: {torch.get_num_threads()} ({why}).{passive_wait_hint(torch.get_num_threads())}")
    return torch.get_num_threads()


def passive_wait_hint(threads: int) -> str:
    """A note for more than one thread on a small machine without ``OMP_WAIT_POLICY`` set; else ``""``.

    OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads, so it can only be set in the environment that starts the
    process; measured there: 2 threads spinning 6-8x slower per step than 1, passive 1.1-1.3x.
    """
    if threads <= 1 or usable_cores() > SMALL_MACHINE_CORES or os.environ.get("OMP_WAIT_POLICY"):
        return ""
    return (
        f" With {threads} threads on {usable_cores()} cores, start with OMP_WAIT_POLICY=PASSIVE in the environment: "
        "waiting OpenMP threads then sleep instead of spinning (see benchmarks/RESULTS.md)."
    )
