"""Readers of camera frames and pedestal maps: .npy / .npz arrays and ROOT TH2 histograms.

CYGNO stores camera frames as ROOT ``TH2`` histograms (one per picture, named like
``pic_run<run>_ev<event>``) and pedestal maps as a ``TH2`` whose bin contents are the
per-pixel means and whose bin errors are the per-pixel noise σ (``pedmap``;
``CYGNUS-RD/reconstruction:reconstruction.py``). They are read here with uproot (no ROOT
install). Every image comes back as float32 [rows, cols] = [y, x] (a TH2's ``values()`` is
indexed [x, y], so it is transposed); a stack as [N, rows, cols].

Errors name the file and, where there is one, the key: a missing file
(``FileNotFoundError``), a missing key (``KeyError`` listing the keys there are), an
object of the wrong kind or shape (``ValueError``).
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np

#: Names of CYGNO camera pictures in ROOT files; group 1 = run, group 2 = event.
PICTURE_KEY = re.compile(r"pic_run(\d+)_ev(\d+)")


def _check_file(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  return path


def _as_images(arr: np.ndarray, where: str) -> np.ndarray:
  arr = np.asarray(arr)
  if arr.ndim not in (2, 3) or arr.size == 0:
    raise ValueError(f"{where}: expected an image [rows, cols] or a stack [N, rows, cols], "
                     f"got shape {arr.shape}")
  if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
    raise ValueError(f"{where}: expected real numbers, got dtype {arr.dtype}")
  out = arr.astype(np.float32)
  if not np.all(np.isfinite(out)):
    raise ValueError(f"{where}: {int(np.sum(~np.isfinite(out)))} non-finite pixel values")
  return out


def read_array_images(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
  """Images from a ``.npy`` file, or the array ``key`` of a ``.npz`` file.

  Args:
    path: a ``.npy`` or ``.npz`` file.
    key: the array of a ``.npz`` (None: its only array; an error if there are several).

  Returns:
    float32 [rows, cols] or [N, rows, cols], counts as stored.
  """
  path = _check_file(path)
  try:
    loaded = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a readable .npy/.npz file ({e})") from None
  if isinstance(loaded, np.ndarray):
    if key is not None:
      raise KeyError(f"{path}: a .npy file holds one array; key {key!r} does not apply")
    return _as_images(loaded, path)
  with loaded:
    names = list(loaded.files)
    if key is None:
      if len(names) != 1:
        raise KeyError(f"{path}: holds {len(names)} arrays {names}; pass a key")
      key = names[0]
    if key not in names:
      raise KeyError(f"{path}: no array {key!r}; arrays: {names}")
    return _as_images(loaded[key], f"{path}[{key!r}]")


def _root_object(path: str, key: str):
  import uproot  # pylint: disable=g-import-not-at-top
  try:
    f = uproot.open(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a readable ROOT file ({e})") from None
  keys = list_root_images(path, _file=f)
  try:
    obj = f[key]
  except KeyError:
    raise KeyError(f"{path}: no object {key!r}; TH2 histograms: {keys[:20]}"
                   + (f" (+{len(keys) - 20} more)" if len(keys) > 20 else "")) from None
  if not obj.classname.startswith("TH2"):
    raise ValueError(f"{path}[{key!r}]: is a {obj.classname}, not a TH2 histogram")
  return obj


def list_root_images(path: str | os.PathLike, _file=None) -> list[str]:
  """Names (without cycle) of every TH2 histogram in a ROOT file, in file order."""
  import uproot  # pylint: disable=g-import-not-at-top
  path = _check_file(path)
  f = _file if _file is not None else uproot.open(path)
  return [k for k, cls in f.classnames(cycle=False).items() if cls.startswith("TH2")]


def read_root_image(path: str | os.PathLike, key: str) -> np.ndarray:
  """The bin contents of the TH2 ``key`` as float32 [rows = y bins, cols = x bins]."""
  path = _check_file(path)
  obj = _root_object(path, key)
  return _as_images(np.asarray(obj.values(flow=False)).T, f"{path}[{key!r}]")


def read_root_pedestal(path: str | os.PathLike, key: str = "pedmap"
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(pedestal mean, noise σ) maps from a CYGNO pedestal TH2 (contents, errors), [rows, cols]."""
  path = _check_file(path)
  obj = _root_object(path, key)
  where = f"{path}[{key!r}]"
  return (_as_images(np.asarray(obj.values(flow=False)).T, where),
          _as_images(np.asarray(obj.errors(flow=False)).T, where))


def read_root_images(path: str | os.PathLike, keys: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, list[str]]:
  """A stack of TH2 pictures: ``keys`` (default: every ``pic_run*_ev*``, else every TH2).

  Returns:
    (float32 [N, rows, cols], the keys read). Pictures of different shapes are an error.
  """
  path = _check_file(path)
  if keys is None:
    every = list_root_images(path)
    keys = [k for k in every if PICTURE_KEY.fullmatch(k)] or every
  if not keys:
    raise KeyError(f"{path}: holds no TH2 histogram")
  images = [read_root_image(path, k) for k in keys]
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise ValueError(f"{path}: pictures have different shapes {sorted(shapes)}")
  return np.stack(images), list(keys)


def read_images(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
  """Images from any supported file by extension: .npy, .npz (``key``), .root (``key`` or
  every picture). Returns float32 [rows, cols] or [N, rows, cols]."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext in (".npy", ".npz"):
    return read_array_images(path, key)
  if ext == ".root":
    if key is not None:
      return read_root_image(path, key)
    return read_root_images(path)[0]
  raise ValueError(f"{os.fspath(path)}: unknown image format {ext!r} (.npy, .npz, .root)")
