"""The classification table: simulate frames → reconstruct clusters → 14 variables, cached.

Why a cached ``.npz`` rather than a TFDS builder: the classifiers read a small table
(14 floats and a few labels per cluster, ~1 MB for 20 000 clusters) that is built once and
held in memory; TFDS/array_record pays off for large per-example records read at random
(the TPC voxels, the SBND images). The cache keeps what matters of the TFDS route: the
file name is ``builder_lib.hashed_name`` of every field that shapes the table (simulator,
reconstruction, observable definitions, sizes, seed), so different tables never share a
file; it is written atomically (``recoil_jax.io``) and reused when present.

Rows are the reconstructed clusters matched to a simulated track (≥ half of the cluster's
hits on it, ``reco.match_clusters``); unmatched clusters (noise, fragments) and tracks with
no cluster are counted in the table's ``stats``. Splits are drawn per *image* (all the
clusters of a frame in one split), seeded.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping

from absl import logging
import numpy as np

from recoil_jax import io
from recoil_jax.data import builder_lib
from recoil_jax.studies.cygno import observables
from recoil_jax.studies.cygno import reco
from recoil_jax.studies.cygno import sim

TABLE_VERSION = 1
SPLITS = ("train", "validation", "test")
COLUMNS = ("features", "label", "energy_kev", "recoil_energy_kev", "species", "iteration",
           "image", "split")


def table_fields(sim_cfg: sim.SimConfig, reco_cfg: reco.RecoConfig, *, num_images: int,
                 seed: int, definitions: Mapping[str, str], split_fractions) -> dict:
  """Every field that shapes the table (what the cache name hashes)."""
  return {"version": TABLE_VERSION, "sim": dataclasses.asdict(sim_cfg),
          "reco": dataclasses.asdict(reco_cfg), "num_images": int(num_images),
          "seed": int(seed), "definitions": dict(sorted(definitions.items())),
          "split_fractions": [float(f) for f in split_fractions]}


def build_table(sim_cfg: sim.SimConfig, reco_cfg: reco.RecoConfig, *, num_images: int,
                seed: int, definitions: Mapping[str, str] | None = None,
                split_fractions=(0.6, 0.2, 0.2), chunk_images: int = 64
                ) -> dict[str, Any]:
  """Simulates ``num_images`` frames in chunks, reconstructs them, computes the variables.

  Returns:
    ``{"features": float32 [N, 14] (observables.NAMES order), "label": int32 [N] (1 NR,
    0 ER), "energy_kev": float32 [N] (ionisation energy of the matched track),
    "recoil_energy_kev", "species" (sim.SPECIES index), "iteration" (iDBSCAN pass),
    "image" (global frame index), "split" (0 train, 1 validation, 2 test), "stats": {...}}``.
  """
  definitions = dict(definitions or observables.DEFAULT_DEFINITIONS)
  fr = np.asarray(split_fractions, np.float64)
  if fr.shape != (3,) or np.any(fr < 0) or abs(fr.sum() - 1) > 1e-6:
    raise ValueError(f"split_fractions={split_fractions} must be 3 fractions summing to 1")
  rows: dict[str, list] = {k: [] for k in COLUMNS if k != "split"}
  stats = {"images": 0, "tracks": 0, "clusters": 0, "unmatched_clusters": 0,
           "tracks_without_cluster": 0, "duplicate_clusters": 0}
  t0 = time.time()
  for c, start in enumerate(range(0, num_images, chunk_images)):
    n = min(chunk_images, num_images - start)
    batch = sim.simulate_images(seed * 100003 + c, n, sim_cfg)
    tr = batch.tracks
    first = np.searchsorted(tr["image"], np.arange(n))
    for i in range(n):
      clusters = reco.find_clusters(batch.images[i], batch.pedestal, batch.noise_sigma,
                                    reco_cfg)
      match = reco.match_clusters(clusters, batch.instance[i])
      stats["clusters"] += len(clusters)
      stats["unmatched_clusters"] += int(np.sum(match < 0))
      seen = set()
      for cl, k in zip(clusters, match):
        if k < 0:
          continue
        if k in seen:  # A track split in several clusters: keep the largest (first).
          stats["duplicate_clusters"] += 1
          continue
        seen.add(k)
        t = first[i] + k
        v = observables.compute(cl.rows, cl.cols, cl.values, definitions)
        rows["features"].append([v[name] for name in observables.NAMES])
        rows["label"].append(int(tr["cls"][t] == sim.NR))
        rows["energy_kev"].append(tr["ionisation_kev"][t])
        rows["recoil_energy_kev"].append(tr["energy_kev"][t])
        rows["species"].append(tr["species"][t])
        rows["iteration"].append(cl.iteration)
        rows["image"].append(start + i)
      stats["tracks_without_cluster"] += int(np.sum(tr["image"] == i)) - len(seen)
    stats["images"] += n
    stats["tracks"] += batch.num_tracks
    logging.info("cygno table: %d / %d images, %d clusters (%.0f s)", start + n, num_images,
                 len(rows["label"]), time.time() - t0)
  if not rows["label"]:
    raise ValueError(f"cygno table: no cluster matched a track in {num_images} images")
  out: dict[str, Any] = {
      "features": np.asarray(rows["features"], np.float32),
      "label": np.asarray(rows["label"], np.int32),
      "energy_kev": np.asarray(rows["energy_kev"], np.float32),
      "recoil_energy_kev": np.asarray(rows["recoil_energy_kev"], np.float32),
      "species": np.asarray(rows["species"], np.int32),
      "iteration": np.asarray(rows["iteration"], np.int32),
      "image": np.asarray(rows["image"], np.int32)}
  # Split by frame: a seeded permutation of the frames, cut at the fractions.
  perm = np.random.default_rng([seed, 99]).permutation(num_images)
  cuts = np.round(np.cumsum(fr)[:2] * num_images).astype(int)
  split_of_image = np.empty(num_images, np.int32)
  split_of_image[perm[:cuts[0]]] = 0
  split_of_image[perm[cuts[0]:cuts[1]]] = 1
  split_of_image[perm[cuts[1]:]] = 2
  out["split"] = split_of_image[out["image"]]
  stats["build_seconds"] = time.time() - t0
  out["stats"] = stats
  return out


def load_or_build(data_dir: str, sim_cfg: sim.SimConfig, reco_cfg: reco.RecoConfig, *,
                  num_images: int, seed: int, definitions: Mapping[str, str] | None = None,
                  split_fractions=(0.6, 0.2, 0.2), chunk_images: int = 64
                  ) -> tuple[dict[str, Any], str]:
  """The table from ``data_dir/cygno/<hashed name>.npz``, built and written if missing.

  Returns:
    (table as in :func:`build_table`, the cache path).
  """
  definitions = dict(definitions or observables.DEFAULT_DEFINITIONS)
  fields = table_fields(sim_cfg, reco_cfg, num_images=num_images, seed=seed,
                        definitions=definitions, split_fractions=split_fractions)
  name = builder_lib.hashed_name(f"cygno_table_{num_images}img_seed{seed}", fields)
  path = os.path.join(os.path.abspath(os.path.expanduser(data_dir)), "cygno", name + ".npz")
  if os.path.exists(path):
    logging.info("cygno table: reusing %s", path)
    with np.load(path, allow_pickle=False) as f:
      table = {k: f[k] for k in COLUMNS}
      table["stats"] = {k[6:]: float(f[k]) for k in f.files if k.startswith("stats_")}
    return table, path
  table = build_table(sim_cfg, reco_cfg, num_images=num_images, seed=seed,
                      definitions=definitions, split_fractions=split_fractions,
                      chunk_images=chunk_images)
  io.write_npz_atomic(path, **{k: table[k] for k in COLUMNS},
                      **{f"stats_{k}": np.float64(v) for k, v in table["stats"].items()})
  io.write_json_atomic(path[:-4] + ".json", {"fields": fields, "stats": table["stats"],
                                             "label": io.SIMULATED})
  return table, path
