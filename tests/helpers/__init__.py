"""Helpers shared by the tests, one concept a module: ``trainers`` (a quiet tiny Trainer, precisions, a CSV-logged
fit, the LightningCLI round trip), ``models`` (tiny modules and step recorders), ``data`` (fixed random data,
``metrics.csv``, a Fashion-MNIST subset), ``ranks`` (per-rank result files of ``ddp_spawn`` runs), ``host_sync``
(host-read guards), ``third_party`` (the compatibility matrix's modules), ``options`` (constructor options),
``tensorboard_server`` (a real TensorBoard server) and ``cli`` (running ``lightning-tricks`` in a subprocess, with
test-only callbacks added by class path).

Imported as ``from helpers.trainers import tiny_trainer``: ``tests/`` is on ``sys.path`` (pytest's ``pythonpath``
setting, and the root ``conftest.py`` under the default ``prepend`` import mode), and the CLI subprocesses get it on
``PYTHONPATH`` from :func:`helpers.cli.cli_env`, so ``--trainer.callbacks+=helpers.cli.RecordFinal`` resolves there.
"""
