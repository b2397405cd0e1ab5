"""Reader and writer of per-event PMT hit lists and PMT position tables.

Hit-list file (``.npz``), one file holding N events in CSR layout:

  offsets  int    [N+1]  hits of event i are rows offsets[i]:offsets[i+1]
  pmt      int    [H]    PMT index into the position table
  time     float  [H]    hit time (ns; any common offset per event)
  charge   float  [H]    charge (p.e.)
  vertex   float  [N, 3] reconstructed vertex (m), for the TOF subtraction
  label    int    [N]    optional: 1 = 0νββ, 0 = ¹⁰C (−1 or absent: unknown)
  visible_energy float [N] optional (MeV)

PMT table: ``.npz`` with ``positions`` [P, 3] (m) (optional ``type`` [P]: 0 17", 1 20"), or
CSV with a header naming columns ``x, y, z`` (m) and optionally ``id`` and ``type``; rows in
PMT-index order (or any order when ``id`` is given). Errors name the file and the event.
"""

from __future__ import annotations

import os

import numpy as np

from recoil_jax import io
from recoil_jax.studies.kamland import sim

REQUIRED = ("offsets", "pmt", "time", "charge", "vertex")


def read_pmt_table(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(positions float64 [P, 3] in m, type int32 [P]) from ``.npz`` or ``.csv``."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: PMT table not found")
  if path.endswith(".npz"):
    with np.load(path) as f:
      if "positions" not in f:
        raise ValueError(f"{path}: PMT table needs an array 'positions' [P, 3]; has "
                         f"{sorted(f.files)}")
      pos = np.asarray(f["positions"], np.float64)
      kind = np.asarray(f["type"], np.int32) if "type" in f else np.zeros(len(pos), np.int32)
  else:
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64)
    names = data.dtype.names or ()
    missing = [c for c in ("x", "y", "z") if c not in names]
    if missing:
      raise ValueError(f"{path}: PMT table CSV lacks column(s) {missing}; header {names}")
    data = np.atleast_1d(data)
    pos = np.stack([data["x"], data["y"], data["z"]], -1)
    kind = data["type"].astype(np.int32) if "type" in names else np.zeros(len(pos), np.int32)
    if "id" in names:
      ids = data["id"].astype(np.int64)
      if sorted(ids.tolist()) != list(range(len(ids))):
        raise ValueError(f"{path}: PMT ids must be 0..{len(ids) - 1}, each once")
      pos, kind = pos[np.argsort(ids)], kind[np.argsort(ids)]
  if pos.ndim != 2 or pos.shape[1] != 3 or not np.all(np.isfinite(pos)):
    raise ValueError(f"{path}: PMT positions must be finite [P, 3], got shape {pos.shape}")
  if np.any(np.linalg.norm(pos, axis=1) == 0):
    raise ValueError(f"{path}: a PMT sits at the detector centre (row "
                     f"{int(np.flatnonzero(np.linalg.norm(pos, axis=1) == 0)[0])})")
  return pos, kind


def write_hits(path: str, events: sim.Events) -> str:
  """Writes ``events`` in the hit-list format (atomically)."""
  return io.write_npz_atomic(path, offsets=events.offsets, pmt=events.pmt, time=events.time,
                             charge=events.charge, vertex=events.vertex, label=events.label,
                             visible_energy=events.visible_energy)


def read_hits(path: str, num_pmts: int) -> sim.Events:
  """Reads and checks a hit-list file against a table of ``num_pmts`` PMTs."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: hit-list file not found")
  try:
    f = np.load(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a readable .npz hit-list file ({e})") from e
  with f:
    missing = [k for k in REQUIRED if k not in f]
    if missing:
      raise ValueError(f"{path}: missing array(s) {missing}; a hit list needs {REQUIRED}")
    a = {k: np.asarray(f[k]) for k in f.files}
  offsets = a["offsets"].astype(np.int64)
  n = len(offsets) - 1
  h = len(a["pmt"])
  if n < 0 or offsets[0] != 0 or offsets[-1] != h or np.any(np.diff(offsets) < 0):
    raise ValueError(f"{path}: offsets must start at 0, never decrease and end at the "
                     f"number of hits {h}")
  for k in ("time", "charge"):
    if len(a[k]) != h:
      raise ValueError(f"{path}: {k} has {len(a[k])} rows, pmt has {h}")
  vertex = a["vertex"].astype(np.float32).reshape(-1, 3) if a["vertex"].size == 3 * n else None
  if vertex is None:
    raise ValueError(f"{path}: vertex must be [{n}, 3], got shape {a['vertex'].shape}")
  event_of = np.repeat(np.arange(n), np.diff(offsets))
  checks = [
      ((a["pmt"] < 0) | (a["pmt"] >= num_pmts), f"PMT index outside [0, {num_pmts})"),
      (~np.isfinite(a["time"]), "non-finite hit time"),
      (~np.isfinite(a["charge"]) | (a["charge"] < 0), "negative or non-finite charge"),
  ]
  for bad, what in checks:
    if np.any(bad):
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(f"{path}: event {int(event_of[i])}, hit {i - int(offsets[event_of[i]])}:"
                       f" {what} ({a['pmt'][i]}, {a['time'][i]}, {a['charge'][i]})")
  bad_v = ~np.all(np.isfinite(vertex), axis=1)
  if np.any(bad_v):
    raise ValueError(f"{path}: event {int(np.flatnonzero(bad_v)[0])}: non-finite vertex")
  label = a.get("label", np.full(n, -1)).astype(np.int32)
  energy = a.get("visible_energy", np.full(n, np.nan)).astype(np.float32)
  return sim.Events(label, vertex, vertex.copy(), energy, np.zeros((n, 3), np.float32), offsets,
                    a["pmt"].astype(np.int32), a["time"].astype(np.float32),
                    a["charge"].astype(np.float32))
