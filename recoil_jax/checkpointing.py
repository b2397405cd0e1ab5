"""Orbax checkpoints of the TrainState plus the trainer's bookkeeping (JSON).

A checkpoint directory holds one sub-directory per step with two items: ``state`` (the
TrainState's arrays, ``StandardSave``) and ``meta`` (a JSON dict: step, epoch, best
validation loss, ...). Writes are atomic (orbax writes to a temporary directory and
renames it), paths are made absolute, and saves are synchronous: on CPU the host copy
of an array can alias the device buffer that the next (donating) train step reuses.
"""

from __future__ import annotations

import os
from typing import Any

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

  def delete(self, step: int) -> None:
    """Removes the checkpoint of ``step``."""
    self._manager.delete(step)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
