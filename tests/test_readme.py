"""The README's shell commands, run as written but with small limits, so the README cannot drift from the code.

Every ```` ```bash ```` block of README.md is split into commands (backslash continuations joined, comments dropped)
and each command is run in order, in a scratch folder that sees the repository's ``examples/``:

- ``make train`` runs the ``train`` recipe of the Makefile (minus ``setup``, which installs; that is CI's job);
  ``make test`` is this suite, so it is only checked to exist;
- ``.venv/bin/lightning-tricks ...`` runs in this process (``cli_main``) with one epoch of 2 batches of 8 images added
  at the end (``--help`` and ``--*.help`` commands as they are, which must exit with status 0; ``report`` as it is,
  on the runs made before it);
- any other ``.venv/bin/<program>`` must exist beside this Python (``tensorboard`` is served in ``test_cli.py``).

Blocks that need a cluster (torchrun on several nodes, SLURM) are fenced ```` ```sh ````; they are not run, but every
config and program they name must exist. Scripts named inline (```.venv/bin/python examples/x.py```) must exist too.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from lightning_tricks.cli import cli_main, run_report_subcommand

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SMALL = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1", "--data.batch_size", "8"]  # fmt: skip


def blocks(language: str) -> list[str]:
    """The bodies of the README's fenced blocks of ``language``."""
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", README, flags=re.M | re.S)]


def commands(block: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, ``# comments`` dropped, split as the shell would."""
    joined = re.sub(r"\\\n", " ", block)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def make_recipe(target: str) -> list[list[str]]:
    """The command lines of a Makefile target (tab-indented lines after ``target:``)."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert match, f"the README runs `make {target}`, but the Makefile has no such target"
    return [shlex.split(line) for line in match.group(1).splitlines()]


def run_cli(args: list[str]) -> None:
    if args[:1] == ["report"]:
        # `report` reads finished runs: an example's log folder (logs/dropout, ...) that this test did not make
        # stands for the main job's runs, so the command itself still runs as written
        for folder in (arg for arg in args[1:] if arg.startswith("logs/")):
            if not Path(folder).exists():
                Path(folder).symlink_to(Path("logs/small_resnet").resolve())
        assert run_report_subcommand(args)
        return
    if any(arg == "--help" or arg.endswith(".help") for arg in args):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(args)
        assert exit_info.value.code in (0, None), f"`lightning-tricks {shlex.join(args)}` exited {exit_info.value}"
    else:
        cli_main([*args, *SMALL])


def test_readme_bash_blocks_run_as_written(tmp_path, fashion_mnist_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.setenv("LIGHTNING_TRICKS_DATA", str(fashion_mnist_dir))
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])
    ran = []
    for block in blocks("bash"):
        for words in commands(block):
            if words[:2] == ["make", "train"]:
                recipe = make_recipe("train")
                assert recipe[-1][0] == ".venv/bin/lightning-tricks", recipe
                run_cli(recipe[-1][1:])
            elif words[:2] == ["make", "test"]:
                assert make_recipe("test")
            elif words[0] == ".venv/bin/lightning-tricks":
                run_cli(words[1:])
            elif words[0].startswith(".venv/bin/"):
                program = Path(sys.executable).parent / words[0].removeprefix(".venv/bin/")
                assert program.exists(), f"README runs {words[0]}, which the setup does not install"
            else:
                pytest.fail(f"README command {shlex.join(words)!r}: not a .venv/bin/ program or make target")
            ran.append(words)
    printed = capsys.readouterr().out
    assert len(ran) >= 8 and "test accuracy:" in printed
    assert (tmp_path / "logs" / "small_resnet").is_dir(), "make train's job logged under ./logs"


def test_readme_cluster_blocks_and_inline_scripts_name_things_that_exist():
    cluster = blocks("sh")
    assert cluster, "the multi-node examples are fenced ```sh"
    for block in cluster:
        assert "torchrun" in block or "#SBATCH" in block, f"a ```sh block that is not cluster-only:\n{block}"
        for config in re.findall(r"--config (\S+)", block):
            assert (REPO / config).is_file(), config
    for script in re.findall(r"\.venv/bin/python ((?:examples|benchmarks)/\S+\.py)", README):
        assert (REPO / script).is_file(), script
    assert "`python " not in README and "\nlightning-tricks " not in README, "programs are named by .venv/bin/"
