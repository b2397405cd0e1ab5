"""Orbax checkpoints of the TrainState plus the trainer's bookkeeping (JSON).

A checkpoint directory holds one sub-directory per step with two items: ``state`` (the
TrainState's arrays, ``StandardSave``) and ``meta`` (a JSON dict: step, epoch, best
validation loss, ...). Writes are atomic (orbax writes to a temporary directory and
renames it), paths are made absolute, and saves are synchronous: on CPU the host copy
of an array can alias the device buffer that the next (donating) train step reuses.

A checkpoint that cannot be read (a truncated or corrupted file: disk full, a copy cut
short) is not fatal: :meth:`Checkpointer.restore_latest` says which step is unreadable and
why, moves it aside to ``<directory>.unreadable/<step>`` (kept for inspection, out of
orbax's sight) and restores the newest readable step instead. A checkpoint whose *tree*
does not match the target (another model or config) is not corruption: that raises.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from absl import logging
import jax

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs by step in one directory."""

  def __init__(self, directory: str, *, max_to_keep: int | None):
    """Opens (creating if needed) ``directory``; keeps the newest ``max_to_keep`` steps."""
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)  # Leftovers of a killed run's unfinished save.
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    """Steps with a complete checkpoint, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Writes ``state`` (pytree of arrays) and ``meta`` (JSON-serialisable) as ``step``."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Reads ``step``; ``target`` gives the tree structure, shapes, dtypes and shardings."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])

  def restore_latest(self, target: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """``(step, state, meta)`` of the newest readable step, or None if there is none.

    Unreadable steps are moved aside (module docstring) with a warning naming the step,
    the directory and the error; older steps are tried in turn.

    Raises:
      ValueError: a step's tree, shapes or dtypes do not match ``target`` (the workdir
        holds another model); the message names the step and the directory.
    """
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, target)
        return step, state, meta
      except Exception as e:  # pylint: disable=broad-except  (orbax/TensorStore/JSON)
        if _is_structure_mismatch(e):
          raise ValueError(
              f"checkpoint step {step} in {self.directory} does not match this model's "
              f"state ({type(e).__name__}: {str(e)[:300]}); was it written by another "
              "config? Use a new workdir.") from e
        aside = self._move_aside(step)
        logging.warning("Checkpoint step %d in %s is unreadable (%s: %.300s); moved to %s, "
                        "trying the previous step.", step, self.directory, type(e).__name__,
                        e, aside)
    return None

  def _move_aside(self, step: int) -> str:
    """Moves step ``step``'s folder to ``<directory>.unreadable/`` (process 0) and rescans."""
    aside_dir = self.directory.rstrip(os.sep) + ".unreadable"
    target = os.path.join(aside_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(aside_dir, exist_ok=True)
      source = os.path.join(self.directory, str(step))
      if os.path.exists(source):
        os.replace(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"checkpoint_aside_{self.directory}_{step}")
    self._manager.reload()
    return target

  def delete(self, step: int) -> None:
    """Removes the checkpoint of ``step``."""
    self._manager.delete(step)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


# Orbax's words for a checkpoint whose tree, shapes or dtypes differ from the target's.
_MISMATCH = re.compile(r"is not compatible with the stored shape|Source: MISSING|Target: MISSING|"
                       r"tree structures? do(?:es)? not match|key mismatch", re.IGNORECASE)
# TensorStore / absl status prefixes ("OUT_OF_RANGE: ...", "DATA_LOSS: ..."): a read failed.
_STORAGE_ERROR = re.compile(r"^\s*[A-Z][A-Z_]{3,}: ")


def _is_structure_mismatch(e: BaseException) -> bool:
  """True for orbax's errors about a checkpoint that does not fit the target tree.

  Unreadable data (TensorStore status errors, bad JSON, missing files) is not a mismatch.
  """
  message = str(e)
  return (isinstance(e, (ValueError, TypeError, KeyError))
          and not _STORAGE_ERROR.match(message) and bool(_MISMATCH.search(message)))
