"""A real ``tensorboard`` server (the venv's) on loopback, for tests that check what a person would see.

``with tensorboard_server(logdir) as server:`` starts it on a free port and stops it at the end;
``server.get(path)`` / ``server.post(path, body)`` return the decoded JSON of its HTTP data API, and
``server.wait_for(path, ready)`` polls until the data is loaded (bounded; the server reads event files in the
background).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lightning.fabric.plugins.environments.lightning import find_free_network_port


class TensorBoardServer:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read().decode())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read().decode())

    def wait_for(self, path: str, ready: Callable[[Any], bool], timeout: float = 90.0) -> Any:
        """GET ``path`` until ``ready(data)``; fail (with the server's stderr if it died) after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        data: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tensorboard exited early: {self.process.stderr.read().decode()[-2000:]}")
            try:
                data = self.get(path)
            except OSError:
                data = None
            if data is not None and ready(data):
                return data
            time.sleep(0.5)
        pytest.fail(f"tensorboard did not serve {path} as expected within {timeout} s; last answer: {data!r}")


@contextmanager
def tensorboard_server(logdir: Path) -> Iterator[TensorBoardServer]:
    """Start ``tensorboard --logdir logdir`` on 127.0.0.1 and a free port; stop it on exit."""
    port = find_free_network_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    command = [str(tensorboard), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--load_fast", "false", "--reload_interval", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield TensorBoardServer(process, port)
    finally:
        process.terminate()
        process.wait(timeout=30)
