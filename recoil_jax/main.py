r"""Command-line entry: trains and evaluates one experiment config into a workdir.

  python -m recoil_jax.main --config=configs/toy.py:smoke --workdir=/tmp/toy \
      --config.optimizer.learning_rate=3e-4

``--config=file.py:variant`` calls ``get_config("variant")``; ``--config.a.b=value``
overrides a field (unknown keys are an error: configs are locked). Multi-process runs
set ``--config.parallel.coordinator_address=host:port`` with ``num_processes`` and
``process_id``, or ``--config.parallel.distributed=True`` for auto-detection.
Re-running the same command resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from recoil_jax import parallel
from recoil_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally 'file.py:variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  config = _CONFIG.value
  parallel.initialize_distributed(config.parallel)
  results = train.train_and_evaluate(config, _WORKDIR.value)
  for split, metrics in results.items():
    if split != "analysis":  # The analysis is in the workdir (tables, plots).
      logging.info("%s: %s", split, metrics)
  logging.info("Results, plots and checkpoints are in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
