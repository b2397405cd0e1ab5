"""Atomic file writes, JSON-safe values and the "simulated" label, shared by every study.

Every write goes to a unique temporary file in the destination's folder (``mkstemp``, so
two writers never share a temporary name), is flushed and fsync-ed, and is renamed onto
the destination with ``os.replace``: a reader, or a run killed mid-write, sees either the
old file or the new one, never a partial one. Folders are created as needed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np

#: Label carried by every table, plot title and JSON record computed from simulated data.
SIMULATED = "simulated"


def json_safe(x: Any) -> Any:
  """``x`` with numpy scalars/arrays as Python values and NaN/±inf as ``None``.

  Mappings get string keys; tuples become lists; other objects are returned unchanged
  (``json.dumps`` then decides).
  """
  if isinstance(x, Mapping):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, np.ndarray):
    return json_safe(x.tolist())
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(float(x)) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
  """Yields a unique temporary path beside ``path``; renames it onto ``path`` on success.

  On an exception the temporary file is removed and ``path`` is left as it was.
  ``suffix`` keeps an extension that a writer insists on (``np.savez`` adds ``.npz``).
  """
  path = os.path.abspath(os.fspath(path))
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}",
                             dir=folder)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
  """Writes ``text`` (UTF-8) to ``path`` atomically; returns the absolute path."""
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  return os.path.abspath(os.fspath(path))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> str:
  """``json_safe(obj)`` as indented, key-sorted JSON (NaN → null), written atomically."""
  return write_text_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=True) + "\n")


def copy_file_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> str:
  """Copies ``src`` to ``dst`` atomically (a killed copy leaves no half file); returns the
  absolute destination path."""
  with atomic_path(dst, suffix=os.path.splitext(os.fspath(dst))[1]) as tmp:
    shutil.copyfile(src, tmp)
  return os.path.abspath(os.fspath(dst))


def write_npz_atomic(path: str | os.PathLike, *, compressed: bool = False,
                     **arrays: Any) -> str:
  """``np.savez`` (or ``savez_compressed``) of ``arrays`` to ``path`` atomically."""
  save = np.savez_compressed if compressed else np.savez
  with atomic_path(path, suffix=".npz") as tmp:
    save(tmp, **arrays)
  return os.path.abspath(os.fspath(path))


def save_figure_atomic(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> str:
  """``fig.savefig`` (a matplotlib Figure) to ``path`` atomically; format from the name."""
  fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
  with atomic_path(path, suffix=f".{fmt}") as tmp:
    fig.savefig(tmp, format=fmt, **savefig_kwargs)
  return os.path.abspath(os.fspath(path))
