"""Shared test helpers: the repository root, config loading, subprocess environment."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

import ml_collections
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA compilation cache for this test session and its subprocesses: the
# toy trainer's steps are compiled once instead of once per run (set before jax loads).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="recoil_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def load_module(path: str, name: str | None = None):
  """The module of a file given relative to the repository root (a script or a config),
  loaded afresh (scripts/ and configs/ are not packages)."""
  name = name or "_under_test_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str, variant: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(variant)`` of a config file given relative to the repository root."""
  return load_module(path, "_test_config").get_config(variant)


def subprocess_env(**extra: str) -> dict[str, str]:
  """Environment for a child Python process running this checkout on CPU."""
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def saved_state(workdir: str, which: str = "best") -> tuple[int, dict]:
  """(step, TrainState tree of numpy arrays) of the newest checkpoint in ``workdir/which``."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  root = os.path.join(workdir, which)
  step = max(int(d) for d in os.listdir(root) if d.isdigit())
  path = os.path.join(root, str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return step, jax.tree.map(np.asarray, checkpointer.restore(path, target))


@pytest.fixture
def toy_smoke() -> ml_collections.ConfigDict:
  """The toy task's smoke config (locked: existing fields can be changed)."""
  return load_config("configs/toy.py", "smoke")


sys.path.insert(0, REPO_ROOT)
