"""Task registry: maps ``config.task`` names to Task classes, imported lazily.

Each entry is ``"module.path:ClassName"``; the module is imported only when the task is
requested, so importing the registry does not pull in every study's dependencies.
"""

from __future__ import annotations

import importlib

import ml_collections

from recoil_jax.tasks.base import Task

_REGISTRY: dict[str, str] = {
    "toy_regression": "recoil_jax.tasks.toy:ToyRegressionTask",
    "tpc_direction": "recoil_jax.tasks.tpc:TpcDirectionTask",
    "sbnd_cosmic": "recoil_jax.tasks.sbnd:SbndCosmicTask",
}


def known_tasks() -> list[str]:
  """Sorted names of the registered tasks."""
  return sorted(_REGISTRY)


def register_task(name: str, target: str) -> None:
  """Registers ``name -> "module.path:ClassName"`` (e.g. for a study outside the package)."""
  if ":" not in target:
    raise ValueError(f"Task target {target!r} for {name!r} must look like 'module.path:Class'")
  _REGISTRY[name] = target


def get_task_class(name: str) -> type[Task]:
  """The Task subclass registered as ``name``."""
  if name not in _REGISTRY:
    raise KeyError(f"Unknown task {name!r} (config.task); known tasks: {known_tasks()}")
  module_name, class_name = _REGISTRY[name].split(":")
  module = importlib.import_module(module_name)
  try:
    cls = getattr(module, class_name)
  except AttributeError as e:
    raise ImportError(f"Task {name!r}: module {module_name} has no class {class_name}") from e
  if not (isinstance(cls, type) and issubclass(cls, Task)):
    raise TypeError(f"Task {name!r}: {_REGISTRY[name]} is not a subclass of Task")
  return cls


def get_task(config: ml_collections.ConfigDict) -> Task:
  """Builds the task named by ``config.task`` from the whole config."""
  return get_task_class(config.task)(config)
