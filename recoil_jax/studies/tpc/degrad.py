"""Readers of real electron-recoil simulation output (DEGRAD-style ionisation-electron lists).

Every reader returns one float64 array [n_i, 3] per event, positions in **mm**, axis order
(x, y, z), in the file's own frame (DEGRAD: the primary starts at the origin along +z).
:func:`stack_tracks` pads such a list into the batch layout of
``recoil_jax.physics.electron_recoils`` so it feeds ``tpc_preprocess.preprocess_tracks``.

Formats:

* **ROOT** (``.root``, read with uproot): one entry per event, jagged (per-event list)
  branches ``x``, ``y``, ``z`` in cm, as the paper's authors store DEGRAD output (arXiv
  2403.15949; DEGRAD: S. F. Biagi, NIM A 421 (1999) 234). A TTree or an
  RNTuple; the tree name, the branch names and the unit are configurable; with
  ``tree=None`` the file must hold exactly one tree.
* **Text** (``.txt``, ``.dat``, ``.csv``): one electron per line, three numbers ``x y z``
  separated by whitespace and/or commas. Lines starting with ``#`` are comments, except event
  headers ``# event <label>`` (case-insensitive). If the file has at least one event header,
  each header starts an event and blank lines are ignored; a header followed by no electron
  is an error (empty event). Without headers, events are runs of electron lines separated
  by one or more blank lines. Default unit mm. Example::

      # event 0
      0.0 0.0 0.0
      0.01 -0.02 0.35
      # event 1
      0.0 0.0 0.0

* **npz** (``.npz``): flat float arrays ``x``, ``y``, ``z`` of equal length M (all electrons
  of all events, event after event) plus exactly one of ``counts`` (int [N], electrons per
  event, sum = M) or ``offsets`` (int [N + 1], start of each event, ``offsets[0] = 0``,
  non-decreasing, ``offsets[-1] = M``). Default unit mm. :func:`write_electron_npz` writes it.

Malformed input raises :class:`ElectronFileError` (a ``ValueError``), whose message names the
file, the event or entries (when known) and the problem: missing tree/branch/array, a
non-numeric line, a length mismatch between x, y and z, NaN/inf, an empty event, and a
corrupted or truncated file (a ROOT basket, an npz member or a text byte that cannot be
read); the low-level error (uproot, zlib, zipfile, numpy) is kept as ``__cause__``.
"""

from __future__ import annotations

import os
import re
from typing import Sequence
import zipfile
import zlib

import numpy as np

# Factors to mm.
UNITS_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 1e-3, "µm": 1e-3}

ROOT_SUFFIXES = (".root",)
TEXT_SUFFIXES = (".txt", ".dat", ".csv")
NPZ_SUFFIXES = (".npz",)

_HEADER = re.compile(r"^#\s*event\b\s*(.*)$", re.IGNORECASE)
_SPLIT = re.compile(r"[\s,]+")


class ElectronFileError(ValueError):
  """A malformed electron-list file; the message names the file, event and problem."""

  def __init__(self, path: str | os.PathLike, problem: str, event: int | str | None = None):
    where = f"{os.fspath(path)}" + (f", event {event}" if event is not None else "")
    super().__init__(f"{where}: {problem}")
    self.path = os.fspath(path)
    self.event = event
    self.problem = problem


def _describe(e: BaseException) -> str:
  """``Type: message`` of a low-level error, on one line."""
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _unit_factor(unit: str) -> float:
  try:
    return UNITS_TO_MM[unit]
  except KeyError:
    raise ValueError(f"unknown length unit {unit!r}; known: {sorted(UNITS_TO_MM)}") from None


def _check_event(path, event, xyz: np.ndarray) -> None:
  if xyz.shape[0] == 0:
    raise ElectronFileError(path, "empty event (no electrons)", event)
  bad = ~np.isfinite(xyz).all(-1)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ElectronFileError(
        path, f"{int(bad.sum())} electron(s) with NaN/inf coordinates (first: electron {i}, "
        f"{xyz[i].tolist()})", event)


def _split_flat(path, flat: dict[str, np.ndarray], counts: np.ndarray,
                names: Sequence[str], factor: float) -> list[np.ndarray]:
  """Splits flat x/y/z arrays into events, checking every event; returns mm arrays."""
  xyz = np.stack([np.asarray(flat[n], np.float64) for n in names], -1) * factor
  bounds = np.concatenate([[0], np.cumsum(counts)])
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    _check_event(path, int(empty[0]), xyz[:0])
  finite = np.isfinite(xyz).all(-1)
  if not finite.all():
    first = int(np.flatnonzero(~finite)[0])
    event = int(np.searchsorted(bounds, first, side="right") - 1)
    _check_event(path, event, xyz[bounds[event]:bounds[event + 1]])
  return [xyz[bounds[i]:bounds[i + 1]] for i in range(len(counts))]


def _find_tree(path, file, tree: str | None):
  trees = {k.split(";")[0]: c for k, c in file.classnames().items()
           if c in ("TTree", "TNtuple", "ROOT::RNTuple") or c.startswith("TTree")}
  if tree is None:
    if len(trees) != 1:
      raise ElectronFileError(
          path, f"tree=None needs exactly one tree in the file, found {sorted(trees) or 'none'}"
          f"; pass tree=")
    tree = next(iter(trees))
  if tree not in trees:
    raise ElectronFileError(path, f"no tree {tree!r} in the file; trees: {sorted(trees)}, "
                            f"all keys: {sorted(file.keys(cycle=False))}")
  return file[tree]


def _unreadable_entries(t, branches: Sequence[str], entry_stop: int | None) -> str:
  """Names the first unreadable basket ("branch 'x', entries [a, b)") of a TTree whose
  read failed, by reading basket by basket; the branches if that cannot be told."""
  fallback = f"branches {list(branches)} of tree {t.name!r}"
  try:
    stop = t.num_entries if entry_stop is None else min(int(entry_stop), t.num_entries)
    for b in branches:
      branch = t[b]
      for i in range(branch.num_baskets):  # RNTuples have no baskets: AttributeError.
        lo, hi = (int(v) for v in branch.basket_entry_start_stop(i))
        if lo >= stop:
          break
        try:
          branch.array(entry_start=lo, entry_stop=min(hi, stop), library="ak")
        except Exception:  # pylint: disable=broad-except
          return f"branch {b!r} of tree {t.name!r} at entries (events) [{lo}, {min(hi, stop)})"
  except Exception:  # pylint: disable=broad-except
    pass
  return fallback


def read_degrad_root(
    path: str | os.PathLike,
    tree: str | None = None,
    branches: Sequence[str] = ("x", "y", "z"),
    unit: str = "cm",
    max_events: int | None = None,
) -> list[np.ndarray]:
  """Reads a ROOT file with one entry per event and jagged x, y, z branches.

  Args:
    path: the ``.root`` file.
    tree: TTree/RNTuple name; None means the only tree in the file.
    branches: names of the x, y and z branches (per-event lists of electron positions).
    unit: unit of the stored positions ("cm" for DEGRAD as the paper's authors store it).
    max_events: read at most this many entries (None: all).

  Returns:
    One float64 array [n_i, 3] per event, in mm.
  """
  import awkward as ak  # pylint: disable=g-import-not-at-top
  import uproot  # pylint: disable=g-import-not-at-top

  factor = _unit_factor(unit)
  if len(branches) != 3:
    raise ValueError(f"branches must name x, y and z, got {branches!r}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{os.fspath(path)}: no such file")
  try:
    file = uproot.open(path)
  except Exception as e:  # uproot raises various types for non-ROOT files.
    raise ElectronFileError(path, f"cannot open as a ROOT file ({_describe(e)})") from e
  with file:
    try:
      t = _find_tree(path, file, tree)
      available = set(t.keys())
    except ElectronFileError:
      raise
    except Exception as e:  # A damaged directory, streamer or tree header.
      raise ElectronFileError(path, "cannot read the file's directory or tree header: the file "
                              f"is corrupted or truncated ({_describe(e)})") from e
    missing = [b for b in branches if b not in available]
    if missing:
      raise ElectronFileError(path, f"tree {t.name!r} has no branch {missing}; branches: "
                              f"{sorted(available)}")
    try:
      arrays = t.arrays(list(branches), library="ak", entry_stop=max_events)
    except Exception as e:  # uproot OSError (short read), zlib.error, DeserializationError...
      where = _unreadable_entries(t, branches, max_events)
      raise ElectronFileError(path, f"cannot read {where}: the file is corrupted or truncated "
                              f"({_describe(e)})") from e
  flat, counts = {}, None
  for b in branches:
    col = arrays[b]
    try:
      n = ak.to_numpy(ak.num(col, axis=1)).astype(np.int64)
    except Exception as e:  # AxisError for flat (one value per event) branches.
      raise ElectronFileError(
          path, f"branch {b!r} is not a per-event list (jagged) branch: {col.type}") from e
    if counts is None:
      counts = n
    elif not np.array_equal(n, counts):
      i = int(np.flatnonzero(n != counts)[0])
      raise ElectronFileError(
          path, f"length mismatch between branches: {branches[0]!r} has {counts[i]} electrons, "
          f"{b!r} has {n[i]}", event=i)
    try:
      flat[b] = ak.to_numpy(ak.flatten(col, axis=1)).astype(np.float64)
    except Exception as e:
      raise ElectronFileError(path, f"branch {b!r} is not numeric: {col.type}") from e
  return _split_flat(path, flat, counts, branches, factor)


def read_electron_text(path: str | os.PathLike, unit: str = "mm") -> list[np.ndarray]:
  """Reads the text format of the module docstring; returns [n_i, 3] float64 arrays in mm."""
  factor = _unit_factor(unit)
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    lineno = raw[:e.start].count(b"\n") + 1
    raise ElectronFileError(path, f"line {lineno}: byte {e.start} ({raw[e.start:e.start + 1]!r}) "
                            "is not UTF-8 text: a binary or corrupted file?") from e
  lines = text.splitlines()
  headers = [(i, m) for i, line in enumerate(lines) if (m := _HEADER.match(line.strip()))]
  events: list[tuple[str | int, list[tuple[int, str]]]] = []
  if headers:
    current = None
    for lineno, raw in enumerate(lines, start=1):
      line = raw.strip()
      m = _HEADER.match(line)
      if m:
        current = (m.group(1).strip() or str(len(events)), [])
        events.append(current)
      elif not line or line.startswith("#"):
        continue
      elif current is None:
        raise ElectronFileError(path, f"line {lineno}: electron line before the first "
                                "'# event' header")
      else:
        current[1].append((lineno, line))
  else:
    current = None
    for lineno, raw in enumerate(lines, start=1):
      line = raw.strip()
      if not line:
        current = None
      elif line.startswith("#"):
        continue
      else:
        if current is None:
          current = (len(events), [])
          events.append(current)
        current[1].append((lineno, line))
  if not events:
    raise ElectronFileError(path, "no events in the file")
  tracks = []
  for label, rows in events:
    values = []
    for lineno, line in rows:
      fields = [s for s in _SPLIT.split(line) if s]
      if len(fields) != 3:
        raise ElectronFileError(path, f"line {lineno}: expected 3 numbers 'x y z', got "
                                f"{len(fields)} fields: {line!r}", label)
      try:
        values.append([float(s) for s in fields])
      except ValueError:
        raise ElectronFileError(path, f"line {lineno}: non-numeric value in {line!r}",
                                label) from None
    xyz = np.asarray(values, np.float64).reshape(-1, 3) * factor
    _check_event(path, label, xyz)
    tracks.append(xyz)
  return tracks


def _npz_member(path, data, name: str) -> np.ndarray:
  """``data[name]``; an unreadable member raises ElectronFileError naming it."""
  try:
    return data[name]
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
    raise ElectronFileError(path, f"cannot read array {name!r}: the file is corrupted or "
                            f"truncated ({_describe(e)})") from e
  except Exception as e:  # A damaged .npy header, an object (pickled) array.
    raise ElectronFileError(path, f"cannot read array {name!r} ({_describe(e)})") from e


def read_electron_npz(path: str | os.PathLike, unit: str = "mm") -> list[np.ndarray]:
  """Reads the npz format of the module docstring; returns [n_i, 3] float64 arrays in mm."""
  factor = _unit_factor(unit)
  try:
    data = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise
  except Exception as e:
    raise ElectronFileError(path, f"cannot read as .npz: not an .npz archive, or a truncated or "
                            f"corrupted one ({_describe(e)})") from e
  if not isinstance(data, np.lib.npyio.NpzFile):  # A single .npy array.
    raise ElectronFileError(path, f"a single .npy array ({data.dtype} {data.shape}), not an .npz "
                            "archive of the arrays x, y, z and counts or offsets")
  with data:
    keys = set(data.files)
    missing = [k for k in ("x", "y", "z") if k not in keys]
    if missing:
      raise ElectronFileError(path, f"missing array(s) {missing}; arrays: {sorted(keys)}")
    flat = {k: _npz_member(path, data, k) for k in ("x", "y", "z")}
    has_counts, has_offsets = "counts" in keys, "offsets" in keys
    if has_counts == has_offsets:
      raise ElectronFileError(path, "needs exactly one of the arrays 'counts' or 'offsets', "
                              f"found arrays {sorted(keys)}")
    index = _npz_member(path, data, "counts" if has_counts else "offsets")
  for k, a in flat.items():
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.floating)
                           or np.issubdtype(a.dtype, np.integer)):
      raise ElectronFileError(path, f"array {k!r} must be a flat numeric array, got "
                              f"{a.dtype} {a.shape}")
  sizes = {k: a.shape[0] for k, a in flat.items()}
  if len(set(sizes.values())) != 1:
    raise ElectronFileError(path, f"length mismatch between x, y, z: {sizes}")
  total = sizes["x"]
  name = "counts" if has_counts else "offsets"
  if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
    raise ElectronFileError(path, f"array {name!r} must be a flat integer array, got "
                            f"{index.dtype} {index.shape}")
  if has_counts:
    counts = index.astype(np.int64)
    if (counts < 0).any():
      i = int(np.flatnonzero(counts < 0)[0])
      raise ElectronFileError(path, f"negative count {counts[i]}", event=i)
  else:
    offsets = index.astype(np.int64)
    if offsets.size < 1 or offsets[0] != 0:
      raise ElectronFileError(path, "'offsets' must start with 0")
    counts = np.diff(offsets)
    if (counts < 0).any():
      i = int(np.flatnonzero(counts < 0)[0])
      raise ElectronFileError(path, "'offsets' decreases", event=i)
  if counts.sum() != total:
    raise ElectronFileError(path, f"{name!r} accounts for {int(counts.sum())} electrons but "
                            f"x, y, z hold {total}")
  return _split_flat(path, flat, counts, ("x", "y", "z"), factor)


def read_electron_file(path: str | os.PathLike, **kwargs) -> list[np.ndarray]:
  """Reads any supported file, dispatching on the suffix (.root, .txt/.dat/.csv, .npz).

  Keyword arguments go to the format's reader (``unit`` for all; ``tree``, ``branches``,
  ``max_events`` for ROOT).
  """
  suffix = os.path.splitext(os.fspath(path))[1].lower()
  if suffix in ROOT_SUFFIXES:
    return read_degrad_root(path, **kwargs)
  # ROOT-only options (a config sets them for every file) do not apply to flat formats.
  kwargs = {k: v for k, v in kwargs.items() if k not in ("tree", "branches")}
  if suffix in TEXT_SUFFIXES:
    return read_electron_text(path, **kwargs)
  if suffix in NPZ_SUFFIXES:
    return read_electron_npz(path, **kwargs)
  raise ElectronFileError(path, f"unknown suffix {suffix!r}; supported: "
                          f"{ROOT_SUFFIXES + TEXT_SUFFIXES + NPZ_SUFFIXES}")


def stack_tracks(tracks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Pads a list of [n_i, 3] electron lists into the simulator's batch layout.

  Returns:
    positions: float32 [N, E_max, 3] (rows >= num_electrons[i] are 0), in the input unit.
    num_electrons: int32 [N].
  """
  if len(tracks) == 0:
    raise ValueError("stack_tracks: empty list of tracks")
  arrays = [np.asarray(t) for t in tracks]
  for i, a in enumerate(arrays):
    if a.ndim != 2 or a.shape[1] != 3:
      raise ValueError(f"stack_tracks: track {i} has shape {a.shape}, expected [n, 3]")
  num = np.array([a.shape[0] for a in arrays], np.int32)
  positions = np.zeros((len(arrays), max(int(num.max()), 1), 3), np.float32)
  flat = np.concatenate(arrays, 0)
  rows = np.repeat(np.arange(len(arrays)), num)
  cols = np.arange(len(flat)) - np.repeat(np.cumsum(num) - num, num)
  positions[rows, cols] = flat
  return positions, num


def write_electron_npz(path: str | os.PathLike, tracks: Sequence[np.ndarray]) -> None:
  """Writes [n_i, 3] electron lists in the npz format (flat x, y, z + counts), unit as given."""
  arrays = [np.asarray(t, np.float64).reshape(-1, 3) for t in tracks]
  flat = np.concatenate(arrays, 0) if arrays else np.zeros((0, 3))
  np.savez(path, x=flat[:, 0], y=flat[:, 1], z=flat[:, 2],
           counts=np.array([len(a) for a in arrays], np.int64))


def write_electron_text(path: str | os.PathLike, tracks: Sequence[np.ndarray]) -> None:
  """Writes [n_i, 3] electron lists in the text format with '# event i' headers."""
  with open(path, "w", encoding="utf-8") as f:
    for i, t in enumerate(tracks):
      f.write(f"# event {i}\n")
      np.savetxt(f, np.asarray(t, np.float64).reshape(-1, 3), fmt="%.17g")
