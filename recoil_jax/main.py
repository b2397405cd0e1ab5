r"""Command-line entry: trains and evaluates one experiment config into a workdir.

  python -m recoil_jax.main --config=configs/<study>.py:smoke --workdir=/tmp/run \
      --config.optimizer.learning_rate=3e-4

``--config=file.py:variant`` calls ``get_config("variant")``; ``--config.a.b=value``
overrides a field. Configs are locked: an unknown key, an unknown variant or a config file
that does not exist is a usage error (a short message naming it, with the closest known
keys for a key; exit status 2). Multi-process runs set
``--config.parallel.coordinator_address=host:port`` with ``num_processes`` and
``process_id``, or ``--config.parallel.distributed=True`` for auto-detection.
Re-running the same command resumes from the workdir's latest checkpoint.

Output: quiet by default. Library logs (absl, orbax, jax, tfds, grain, tensorboardX) are
shown from WARNING up; the trainer prints a progress bar and one line per evaluation.
``--verbosity=0`` (absl's flag; 1 for debug) shows every INFO log line as well. At the end
process 0 prints a summary: the final metrics of the best weights per split, the figures
(``*.png``) and tables (``*.md``, ``final_metrics.json``) written into the workdir, and the
workdir.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging as py_logging
import os
import re
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from recoil_jax import parallel
from recoil_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally 'file.py:variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics).")
flags.mark_flags_as_required(["config", "workdir"])

USAGE = ("usage: python -m recoil_jax.main --config=FILE.py[:VARIANT] --workdir=DIR "
         "[--config.KEY=VALUE ...] [--verbosity=0]")
USAGE_EXIT_CODE = 2

# Python loggers of the libraries kept at WARNING unless --verbosity is given. orbax, tfds
# and grain log through absl (the "absl" logger); the others through their own loggers.
QUIET_LOGGERS = ("absl", "orbax", "jax", "jaxlib", "tensorflow_datasets", "tensorflow", "grain",
                 "tensorboardX", "etils", "h5py", "fsspec")
# Workdir folders the summary does not look into.
_SKIP_DIRS = frozenset({"checkpoints", "best", "tensorboard"})
_FIGURE_SUFFIXES = (".png",)
_TABLE_SUFFIXES = (".md",)
_TABLE_NAMES = ("final_metrics.json",)


# -- command-line errors ----------------------------------------------------------------------

def _config_spec(argv: Sequence[str]) -> str | None:
  """The ``--config`` value ('file.py[:variant]') of a command line, or None."""
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg == "--":
      break
    m = re.match(r"^--?config(=(.*))?$", arg)
    if m:
      if m.group(1) is not None:
        return m.group(2)
      return args[i + 1] if i + 1 < len(args) else None
  return None


def _override_keys(argv: Sequence[str]) -> list[tuple[str, str]]:
  """(key, argument) of every ``--config.key=value`` override of a command line."""
  out = []
  for arg in argv[1:]:
    if arg == "--":
      break
    m = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
    if m:
      out.append((m.group(1), arg))
  return out


def _config_paths(node: Any, prefix: str = "") -> list[str]:
  """Every dotted key of a config (groups and leaves)."""
  paths = []
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    for k in node.keys():
      path = f"{prefix}{k}"
      paths.append(path)
      paths.extend(_config_paths(node[k], path + "."))
  return paths


def unknown_key_message(config: Any, key: str) -> str | None:
  """The error for an override ``key`` ('a.b.c') unknown to ``config``; None if it exists.

  Names the key and suggests the closest known keys (difflib).
  """
  parts = [p for p in re.sub(r"\[[^\]]*\]", "", key).split(".") if p]
  node, done = config, []
  for part in parts:
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      return (f"unknown config key {key!r}: {'.'.join(done)!r} is a value "
              f"({type(node).__name__}), not a group of keys")
    if part not in node.keys():
      prefix = ".".join(done) + "." if done else ""
      siblings = [str(k) for k in node.keys()]
      close = [prefix + k for k in difflib.get_close_matches(part, siblings, n=3, cutoff=0.6)]
      if not close:  # The right name in another group?
        by_name = {}
        for path in _config_paths(config):
          by_name.setdefault(path.rsplit(".", 1)[-1], []).append(path)
        close = [p for name in difflib.get_close_matches(part, list(by_name), n=3, cutoff=0.75)
                 for p in by_name[name]][:3]
      if close:
        return f"unknown config key {key!r}; closest known keys: {', '.join(close)}"
      where = f" under {'.'.join(done)!r}" if done else ""
      shown = ", ".join(siblings[:12]) + (", ..." if len(siblings) > 12 else "")
      return f"unknown config key {key!r}; known keys{where}: {shown}"
    node = node[part]
    done.append(part)
  return None


def _load_config(spec: str) -> Any:
  """``get_config(variant)`` of a '--config' value 'file.py[:variant]', as config_flags does."""
  path, *variant = spec.split(":", 1)
  module_spec = importlib.util.spec_from_file_location("_recoil_jax_main_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*variant)


def _short(message: str) -> str:
  """The last meaningful line of an error message (drops an embedded traceback)."""
  lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
  if not lines:
    return str(message)
  head = lines[0]
  if len(lines) == 1:
    return head
  last = lines[-1]
  # "flag --config=...: Error whilst parsing config file:" ... "ValueError: Unknown variant".
  m = re.match(r"^(flag --\S+): ", head)
  return f"{m.group(1)}: {last}" if m else last


def _diagnose(argv: Sequence[str], error: BaseException | None) -> str | None:
  """A short message for a bad command line, or None if the cause is not a usage error."""
  spec = _config_spec(argv)
  if spec is not None:
    path = spec.split(":", 1)[0]
    if not path:
      return "--config: empty config file path"
    if not os.path.isfile(path):
      return f"--config={spec}: config file {path!r} does not exist"
    overrides = _override_keys(argv)
    if overrides:
      try:
        config = _load_config(spec)
      except Exception:  # pylint: disable=broad-except
        config = None  # The variant error: reported from `error` below.
      if isinstance(config, (ml_collections.ConfigDict, dict)):
        for key, arg in overrides:
          message = unknown_key_message(config, key)
          if message:
            return f"{arg}: {message}"
  if error is None:
    return None
  if isinstance(error, flags.Error):
    return _short(str(error))
  return None


def parse_flags(argv: Sequence[str]) -> list[str]:
  """``app.run``'s flags parser: absl parsing, short usage errors, quiet library logs.

  A bad command line (unknown config key, bad variant, missing config file, bad flag
  value) prints two lines on stderr (the error and the usage) and exits with status 2.
  Unless ``--verbosity`` is on the command line, absl's verbosity and the library loggers
  (:data:`QUIET_LOGGERS`) are set to WARNING.
  """
  try:
    args = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    message = _diagnose(argv, e)
    if message is None:
      raise
    _usage_exit(message)
  # A config file that does not load (IOError) parses into a placeholder raising on use.
  try:
    load_error = object.__getattribute__(flags.FLAGS["config"].value, "_error")
  except AttributeError:
    load_error = None
  if load_error is not None:
    _usage_exit(_diagnose(argv, None) or f"--config: {_short(str(load_error))}")
  if not flags.FLAGS["verbosity"].present:
    set_quiet_logging()
  return args


def _usage_exit(message: str) -> None:
  sys.stderr.write(f"error: {message}\n{USAGE}\n")
  sys.stderr.flush()
  sys.exit(USAGE_EXIT_CODE)


def set_quiet_logging() -> None:
  """absl verbosity and the library loggers at WARNING (their INFO lines hidden).

  Loggers named in absl's ``--logger_levels`` keep the level given there.
  """
  flags.FLAGS.verbosity = -1  # absl WARNING; also stops app.run's bump to INFO.
  explicit = set(dict(flags.FLAGS["logger_levels"].value or {}))
  for name in QUIET_LOGGERS:
    if name not in explicit:
      py_logging.getLogger(name).setLevel(py_logging.WARNING)
  # TFDS warns about every custom config and draws its own bars while a dataset is built;
  # the trainer says when data is being prepared instead.
  py_logging.getLogger("absl").addFilter(_drop_tfds_chatter)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def _drop_tfds_chatter(record: py_logging.LogRecord) -> bool:
  """Keeps TFDS's errors, drops its warnings and info (absl logger filter)."""
  return record.levelno >= py_logging.ERROR or "tensorflow_datasets" not in record.pathname


# -- the closing summary ----------------------------------------------------------------------

def _format_value(value: Any) -> str:
  return f"{value:.5g}" if isinstance(value, float) else str(value)


def output_files(workdir: str) -> tuple[list[str], list[str]]:
  """(figures, tables): paths of the ``*.png`` and ``*.md``/``final_metrics.json`` files in
  ``workdir`` and its sub-folders one level down (not checkpoints/best/tensorboard)."""
  figures, tables = [], []

  def visit(folder: str, depth: int) -> None:
    try:
      entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
      return
    for entry in entries:
      if entry.is_dir():
        if depth == 0 and entry.name not in _SKIP_DIRS and not entry.name.startswith("."):
          visit(entry.path, depth + 1)
      elif entry.is_file() and not entry.name.startswith("."):
        if entry.name.endswith(_FIGURE_SUFFIXES):
          figures.append(entry.path)
        elif entry.name.endswith(_TABLE_SUFFIXES) or entry.name in _TABLE_NAMES:
          tables.append(entry.path)

  visit(workdir, 0)
  return figures, tables


def summary_lines(results: dict[str, Any], workdir: str) -> list[str]:
  """The closing summary: final metrics per split, figures, tables and the workdir."""
  workdir = os.path.abspath(workdir)
  lines = ["Final metrics (best weights):"]
  for split, metrics in results.items():
    if split == "analysis":  # In the workdir (tables, plots).
      continue
    if isinstance(metrics, dict):
      text = ", ".join(f"{k}={_format_value(v)}" for k, v in metrics.items())
    else:
      text = _format_value(metrics)
    lines.append(f"  {split}: {text}")
  figures, tables = output_files(workdir)
  lines.extend(f"Figure: {p}" for p in figures)
  lines.extend(f"Table: {p}" for p in tables)
  lines.append(f"Workdir: {workdir}")
  return lines


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  config = _CONFIG.value
  parallel.initialize_distributed(config.parallel)
  results = train.train_and_evaluate(config, _WORKDIR.value)
  if jax.process_index() == 0:
    out = _WORKDIR.value
    if config.mode == "evaluate":
      out = os.path.join(out, train.EVALUATION_DIR)
    print("\n".join(summary_lines(results, out)), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
