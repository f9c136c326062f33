"""Every command of README.md and docs/*.md, run as written with small limits, so the docs cannot drift from the code.

Pages are taken in reading order. README.md runs first, in a scratch folder that sees the repository's
``examples/``. Each page of ``docs/`` with commands then runs in a copy of the folder the README's commands left
behind, as a reader who followed the README finds it (``make train`` has made ``logs/small_resnet``).

What a fenced block means:

- ```` ```bash ````: run here, command by command (backslash continuations joined, ``# comments`` dropped, ``&&``
  splits a line, and a ``>`` or ``|`` ends a command):

  - ``make train`` runs the Makefile recipe's ``lightning-tricks`` line (not ``setup``, which installs: that is CI's
    job); ``make test`` is this suite, so it is only checked to exist; another target's recipe lines are checked as
    the commands below;
  - ``.venv/bin/lightning-tricks ...`` (also ``.venv/bin/python -m lightning_tricks.cli`` and
    ``-m lightning_tricks.report``) runs in this process with one epoch of 2 batches of 8 images appended;
    ``--help``, ``--*.help`` and ``--print_config`` must exit with status 0; ``report`` runs as it is, on the runs
    made before it;
  - ``.venv/bin/python <script>.py ...``: the script's argparse parser must accept the arguments, and the script
    stops there (``tests/test_examples.py`` and ``tests/test_benchmarks.py`` run the scripts at toy sizes);
  - ``.venv/bin/python -m <module>``: the module must be importable;
  - ``bash <script>``: the script must exist;
  - any other ``.venv/bin/<program>`` must exist beside this Python (``tensorboard`` is served in ``test_cli.py``).

- ```` ```sh ````: commands that need GPUs, several processes or a cluster. They are not run; every
  ``lightning-tricks`` command in them (also behind ``torchrun -m lightning_tricks.cli`` or ``srun``) is parsed with
  ``--print_config``, which checks each option, value and config file without training. Other commands are checked
  as in ``bash`` blocks.

- ```` ```python ````: run with ``model`` and ``datamodule`` standing for the reader's own (Lightning's
  ``BoringModel`` and ``BoringDataModule``), every ``Trainer`` limited to one epoch of 2 batches.

Scripts named inline (```.venv/bin/python examples/x.py```) must exist too, and programs are always named by their
``.venv/bin/`` path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import runpy
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_tricks.cli import cli_main, run_report_subcommand

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
SMALL = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1", "--data.batch_size", "8"]  # fmt: skip
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", flags=re.M | re.S)
COMMAND_FENCES = ("bash", "sh", "python")
#: Words that end a command: what follows is a redirection or another program.
COMMAND_ENDS = (">", ">>", "2>", "2>&1", "|", ";")
#: What a ```sh block holds: something this machine cannot run in a test (GPUs, a cluster, several processes).
NEEDS_MORE = re.compile(r"torchrun|#SBATCH|\bsrun\b|--trainer\.devices [2-9]|--trainer\.num_nodes")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in page order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def commands(block: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, ``# comments`` dropped, split as the shell would."""
    found = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            command, words = words[:cut], words[cut + 1 :]
            ends = [i for i, word in enumerate(command) if word in COMMAND_ENDS]
            if command[: ends[0] if ends else None]:
                found.append(command[: ends[0] if ends else None])
    return found


def make_recipe(target: str) -> list[list[str]]:
    """The commands of a Makefile target (tab-indented lines after ``target:``)."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert match, f"the docs run `make {target}`, but the Makefile has no such target"
    return [words for line in match.group(1).splitlines() for words in commands(line.strip())]


def pages_with_commands() -> list[Path]:
    return [page for page in DOCS if any(lang in COMMAND_FENCES for lang, _ in fenced_blocks(page.read_text()))]


class _Parsed(Exception):
    """Raised in place of running a script once its argparse parser has accepted the arguments."""


class SmallTrainer(pl.Trainer):
    """The reader's ``Trainer(...)`` with one epoch of 2 training batches, for the docs' Python blocks."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.update(max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1)
        kwargs.update(enable_progress_bar=False, enable_model_summary=False)
        super().__init__(*args, **kwargs)


class PageRunner:
    """Runs the command blocks of one page in the current folder; ``ran`` lists what it ran or checked."""

    def __init__(self, page: Path) -> None:
        self.page = page
        self.where = page.relative_to(REPO)
        self.ran: list[str] = []
        self.printed = io.StringIO()

    def run(self) -> None:
        text = self.page.read_text()
        with contextlib.redirect_stdout(self.printed):
            for language, body in fenced_blocks(text):
                if language == "bash":
                    for words in commands(body):
                        self.command(words, parse_only=False)
                elif language == "sh":
                    assert NEEDS_MORE.search(body), f"{self.where}: a ```sh block that runs here (use ```bash):{body}"
                    for words in commands(body):
                        self.command(words, parse_only=True)
                elif language == "python":
                    self.python(body)
        for script in re.findall(r"\.venv/bin/python (\S+\.py)", text):
            assert (REPO / script).is_file(), f"{self.where} names {script}, which does not exist"
        bare = "`python " in text or "\nlightning-tricks " in text
        assert not bare, f"{self.where}: name programs by their .venv/bin/ path"

    def command(self, words: list[str], parse_only: bool) -> None:
        shown = shlex.join(words)
        if words[0] == "srun":
            words = words[1:]
            while words and words[0].startswith("-"):
                words = words[1:]
        program = words[0]
        if words[:2] == ["make", "train"]:
            recipe = make_recipe("train")
            assert recipe[-1][0] == ".venv/bin/lightning-tricks", recipe
            self.cli(recipe[-1][1:], parse_only)
        elif words[:2] == ["make", "test"]:
            assert make_recipe("test"), "make test has no recipe"
        elif program == "make":
            for target in words[1:]:
                for line in make_recipe(target):
                    self.command(line, parse_only=True)
        elif program == "bash":
            assert (REPO / words[1]).is_file(), f"{self.where}: `{shown}` runs a script that does not exist"
        elif program == ".venv/bin/lightning-tricks":
            self.cli(words[1:], parse_only)
        elif program == ".venv/bin/torchrun":
            self.venv_program(program, shown)
            assert "-m" in words, f"{self.where}: `{shown}`: torchrun without -m lightning_tricks.cli"
            module = words[words.index("-m") + 1]
            assert module == "lightning_tricks.cli", f"{self.where}: `{shown}` runs {module}"
            self.cli(words[words.index("-m") + 2 :], parse_only=True)
        elif program == ".venv/bin/python" and words[1:2] == ["-m"]:
            self.python_module(words[2], words[3:], parse_only, shown)
        elif program == ".venv/bin/python":
            self.script(words[1], words[2:], shown)
        elif program.startswith(".venv/bin/"):
            self.venv_program(program, shown)
        else:
            pytest.fail(f"{self.where}: `{shown}` is not a .venv/bin/ program, a make target or a bash script")
        self.ran.append(shown)

    def venv_program(self, program: str, shown: str) -> None:
        path = Path(sys.executable).parent / program.removeprefix(".venv/bin/")
        assert path.exists(), f"{self.where}: `{shown}` runs {program}, which the set-up does not install"

    def cli(self, args: list[str], parse_only: bool) -> None:
        if args[:1] == ["report"]:
            self.report(args)
        elif parse_only or any(arg in ("--help", "--print_config") or arg.endswith(".help") for arg in args):
            extra = ["--print_config"] if parse_only and "--help" not in args else []
            with pytest.raises(SystemExit) as exit_info:
                cli_main([*args, *extra])
            assert exit_info.value.code in (0, None), f"{self.where}: `lightning-tricks {shlex.join(args)}` failed"
        else:
            cli_main([*args, *SMALL])

    def report(self, args: list[str]) -> None:
        # `report` reads finished runs: an example's log folder (logs/dropout, ...) that no command of the page made
        # stands for the main job's runs, so the command itself still runs as written
        for folder in (arg for arg in args[1:] if arg.startswith("logs/")):
            if not Path(folder).exists():
                assert Path("logs/small_resnet").is_dir(), f"{self.where}: `report {folder}` before any run"
                Path(folder).symlink_to(Path("logs/small_resnet").resolve())
        assert run_report_subcommand(args)

    def python_module(self, module: str, args: list[str], parse_only: bool, shown: str) -> None:
        if module == "lightning_tricks.cli":
            self.cli(args, parse_only)
        elif module == "lightning_tricks.report":
            self.cli(["report", *args], parse_only)
        else:
            assert importlib.util.find_spec(module), f"{self.where}: `{shown}` runs {module}, which is not installed"

    def script(self, script: str, args: list[str], shown: str) -> None:
        """Let the script's argparse parser read ``args``, then stop it before it does any work."""
        path = REPO / script
        assert path.is_file(), f"{self.where}: `{shown}` runs {script}, which does not exist"
        parse_args = argparse.ArgumentParser.parse_args

        def parse_and_stop(parser: argparse.ArgumentParser, *a, **k) -> argparse.Namespace:
            parse_args(parser, *a, **k)
            raise _Parsed

        errors = io.StringIO()
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(errors):
            patch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
            patch.setattr(sys, "argv", [str(path), *args])
            patch.syspath_prepend(str(path.parent))
            try:
                runpy.run_path(str(path), run_name="__main__")
            except _Parsed:
                return
            except SystemExit as exit_info:
                pytest.fail(f"{self.where}: `{shown}`: rejected ({exit_info}): {errors.getvalue()}")
        pytest.fail(f"{self.where}: `{shown}` parsed no arguments with argparse, so this test cannot check it")

    def python(self, source: str) -> None:
        from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

        namespace = {"__name__": "__docs__", "model": BoringModel(), "datamodule": BoringDataModule()}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pl, "Trainer", SmallTrainer)
            exec(compile(source, f"{self.where} (python block)", "exec"), namespace)
        self.ran.append(f"python block of {len(source.splitlines())} lines")


@contextlib.contextmanager
def reader_folder(folder: Path, data_dir: Path) -> Iterator[None]:
    """Run in ``folder`` as a reader would, and give back this process's folder, environment and threads after."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("LIGHTNING_TRICKS_DATA", str(data_dir))
        patch.setattr(sys, "argv", ["lightning-tricks"])
        patch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "unset"))  # the CLI exports it: restore
        if os.environ["OMP_NUM_THREADS"] == "unset":
            patch.delenv("OMP_NUM_THREADS")
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> tuple[Path, PageRunner]:
    """The folder the README's commands ran in (the docs pages start from a copy of it), and what they did."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "examples").symlink_to(REPO / "examples")
    runner = PageRunner(README)
    with reader_folder(folder, fashion_mnist_dir):
        runner.run()
    return folder, runner


def test_readme_commands_run_as_written(readme_run: tuple[Path, PageRunner]) -> None:
    folder, runner = readme_run
    assert [command for command in runner.ran if command.startswith("make")] == ["make train", "make test"]
    assert len(runner.ran) >= 6 and any(command.startswith("python block") for command in runner.ran), runner.ran
    assert "test accuracy:" in runner.printed.getvalue()
    assert (folder / "logs" / "small_resnet").is_dir(), "make train's job logged under ./logs"


@pytest.mark.parametrize("page", pages_with_commands(), ids=lambda page: page.name)
def test_docs_page_commands_run_as_written(
    page: Path, readme_run: tuple[Path, PageRunner], tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    folder = tmp_path / "reader"
    shutil.copytree(readme_run[0], folder, symlinks=True)
    runner = PageRunner(page)
    with reader_folder(folder, fashion_mnist_dir):
        runner.run()
    assert runner.ran, f"{page.name} has command blocks, yet nothing ran"


def test_command_splitting() -> None:
    block = "make lint && .venv/bin/ruff check . \\\n  --fix  # a comment\nx > out.txt 2>&1\n\n#SBATCH --nodes=2\n"
    assert commands(block) == [["make", "lint"], [".venv/bin/ruff", "check", ".", "--fix"], ["x"]]


def test_scripts_are_parsed_and_stopped() -> None:
    runner = PageRunner(README)
    runner.script("examples/dropout.py", ["--epochs", "3", "--seeds", "0", "1"], "a good command")
    with pytest.raises(pytest.fail.Exception, match="rejected"):
        runner.script("examples/dropout.py", ["--epoch-count", "3"], "a bad command")
