"""A gloo process group left alive at exit is destroyed while Python is still whole (see ``_distributed``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from lightning.fabric.plugins.environments.lightning import find_free_network_port

_SCRIPT = textwrap.dedent(
    """
    import atexit
    import torch
    import torch.distributed as dist

    # Registered before lightning_tricks is imported, so atexit runs it after the package's handler.
    atexit.register(lambda: print("group alive at the end of exit:", dist.is_initialized(), flush=True))

    import lightning_tricks  # noqa: F401

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
    t = torch.ones(3)
    dist.all_reduce(t)
    print("group alive before exit:", dist.is_initialized(), flush=True)
    """
)


def test_importing_the_package_destroys_a_live_gloo_group_at_exit() -> None:
    script = _SCRIPT.format(port=find_free_network_port())
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "group alive before exit: True" in done.stdout
    assert "group alive at the end of exit: False" in done.stdout


def test_the_exit_handler_is_a_no_op_without_a_group() -> None:
    import torch.distributed as dist

    from lightning_tricks._distributed import destroy_process_group_if_alive

    assert not dist.is_initialized()
    destroy_process_group_if_alive()  # must not raise "Default process group has not been initialized"
    assert not dist.is_initialized()


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, lightning_tricks; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert done.stderr == ""  # the exit handler must not import torch at interpreter exit (noisy finalizer errors)
