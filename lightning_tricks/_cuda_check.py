"""Undo Lightning's NVML-based CUDA check where NVML cannot be loaded: ~0.35 ms saved per optimizer step on a CPU.

``import lightning`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (``lightning/fabric/__init__.py``), so that
``torch.cuda.is_available()`` asks NVML instead of initializing CUDA (which would poison forked workers). torch's
``Optimizer.step`` calls ``torch.accelerator.is_available()`` on every step (its graph-capture health check), which
with that variable calls ``torch.cuda.device_count()``, which before CUDA is initialized loads NVML afresh
(``ctypes.CDLL("libnvidia-ml.so.1")``, never cached). On a machine without the NVIDIA driver (a CPU machine with
torch's default CUDA build) the load fails, torch falls back to ``cudaGetDeviceCount`` — the call the variable was
meant to avoid — and the failed library search is repeated on every step: measured on this project's 2-core CPU VM,
0.35 ms per step, 1.09x the step of a 784-256-256-10 MLP at batch 128 (``benchmarks/RESULTS.md``).

:func:`skip_failing_nvml_check` sets the variable back to ``"0"`` when, and only when, NVML cannot be loaded: torch
then calls ``cudaGetDeviceCount`` directly, the same answer it reached through the failed load, without the search.
Where NVML loads (a machine with an NVIDIA driver) nothing changes. Called by ``lightning-tricks`` (after Lightning
is imported; Lightning sets the variable again at import) and by :class:`~lightning_tricks.models.Classifier`'s
``setup``; a project of its own can call it after importing Lightning.
"""

from __future__ import annotations

import ctypes
import functools
import os

VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"
#: The library torch's NVML check loads (``torch.cuda._raw_device_count_nvml``).
NVML_LIBRARY = "libnvidia-ml.so.1"


@functools.cache
def nvml_loads() -> bool:
    """Whether the NVML library torch's check loads can be loaded here (tried once per process)."""
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


def skip_failing_nvml_check() -> bool:
    """Set ``PYTORCH_NVML_BASED_CUDA_CHECK=0`` if it is ``"1"`` and NVML cannot be loaded; return whether it did."""
    if os.environ.get(VARIABLE) != "1" or nvml_loads():
        return False
    os.environ[VARIABLE] = "0"
    return True
