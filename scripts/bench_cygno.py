"""CYGNO throughput on this machine: reconstruction + observables, and UNet segmentation.

  python scripts/bench_cygno.py                      # ~1–2 min on the 2-core CPU
  python scripts/bench_cygno.py --frames 64 --json /tmp/bench_cygno.json

Three measurements, all on simulated frames (``studies/cygno/sim.py``, the classification
config: one 2–40 keV ER or NR per ``--size``² frame):

1. **Clustering** per frame: recoil_jax's chain (``reco.find_clusters``: pedestal, zero
   suppression, median filter, threshold, 4×4 rebin, iDBSCAN on scikit-learn DBSCAN) vs a
   plain route on the same preprocessed frame (``scipy.ndimage.label``, 8-connected
   components of the hits, ≥ ``min_hits``); clusters/s and frames/s.
2. **Observables** per cluster, on the iDBSCAN clusters: ``observables.compute`` (all 14
   variables, skeleton included) vs a plain numpy implementation of the 11 variables
   that need no skeleton (a full n × n distance matrix for ChargeUnif, a dense 2×2 rebin
   for MaxDen); clusters/s, and the largest relative difference on the shared variables as a
   cross-check of the definitions.
3. **Segmentation**: images/s of the jitted forward pass (evaluation mode) of
   ``recoil_jax.nn.unet`` (unet / resunet / attresunet, ``--filters``) at ``--seg-size``²
   (default 512, the thesis' Mask R-CNN frame size), batch ``--seg-batch``, after one
   warm-up call; the compile time is reported separately.

Timings are wall-clock medians of ``--repeats`` runs; the machine may be shared (the load
average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recoil_jax.studies.cygno import observables  # noqa: E402
from recoil_jax.studies.cygno import reco  # noqa: E402
from recoil_jax.studies.cygno import sim  # noqa: E402

PLAIN_NAMES = ("SC_nhits", "SC_integral", "SC_length", "SC_width", "delta", "slimness",
               "SDCD", "LAPA", "CylThick", "ChargeUnif", "MaxDen")


def plain_clusters(filtered: np.ndarray, min_hits: int) -> list[tuple[np.ndarray, ...]]:
  """8-connected components of the hits of a preprocessed frame: [(rows, cols)]."""
  lab, n = ndimage.label(filtered > 0, structure=np.ones((3, 3)))
  out = []
  for sl, k in zip(ndimage.find_objects(lab), range(1, n + 1)):
    r, c = np.nonzero(lab[sl] == k)
    if r.size >= min_hits:
      out.append((r + sl[0].start, c + sl[1].start))
  return out


def plain_observables(rows: np.ndarray, cols: np.ndarray, values: np.ndarray
                      ) -> dict[str, float]:
  """The skeleton-free variables, written directly (paper definitions)."""
  xy = np.stack([cols, rows], 1).astype(np.float64)
  v = values.astype(np.float64)
  n = len(xy)
  out = {"SC_nhits": float(n), "SC_integral": float(v.sum())}
  w = np.maximum(v, 0) if np.any(v > 0) else np.ones(n)
  cw = (xy * w[:, None]).sum(0) / w.sum()
  _, vecs = np.linalg.eigh(np.cov((xy - cw).T, aweights=w, bias=True))
  along, across = (xy - cw) @ vecs[:, 1], (xy - cw) @ vecs[:, 0]
  out["SC_length"] = float(along.max() - along.min() + 1)
  out["SC_width"] = float(across.max() - across.min() + 1)
  out["delta"] = out["SC_integral"] / n
  out["slimness"] = out["SC_width"] / out["SC_length"]
  d = xy - xy.mean(0)
  _, vecs = np.linalg.eigh(d.T @ d / n)
  out["SDCD"] = float(np.sqrt((d**2).sum(1).mean()))
  p = d @ vecs[:, 1]
  out["LAPA"] = float(p.max() - p.min())
  out["CylThick"] = float(((d @ vecs[:, 0])**2).sum())
  dist = np.sqrt(((xy[:, None] - xy[None])**2).sum(-1))
  out["ChargeUnif"] = float(np.std(dist.sum(1) / max(n - 1, 1)))
  r0, c0 = rows.min() // 2, cols.min() // 2
  grid = np.zeros((rows.max() // 2 - r0 + 1, cols.max() // 2 - c0 + 1))
  np.add.at(grid, (rows // 2 - r0, cols // 2 - c0), v)
  out["MaxDen"] = float(grid.max())
  return out


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def bench_reco(frames: int, size: int, repeats: int) -> dict:
  cfg = sim.SimConfig(height=size, width=size, tracks_per_image=1, multiplicity="fixed",
                      er_energy_kev=(2.0, 40.0), nr_ionisation_kev=(2.0, 40.0))
  batch = sim.simulate_images(0, frames, cfg)
  rcfg = reco.RecoConfig()
  pre = [reco.preprocess(im, batch.pedestal, batch.noise_sigma, rcfg)[1] for im in batch.images]
  clusters: list = []

  def ours():
    clusters.clear()
    for im in batch.images:
      clusters.extend(reco.find_clusters(im, batch.pedestal, batch.noise_sigma, rcfg))

  plain: list = []

  def theirs():
    plain.clear()
    for f in pre:
      plain.extend(plain_clusters(f, rcfg.min_hits))

  t_ours = _median_time(ours, repeats)
  t_plain = _median_time(theirs, repeats)
  t_pre = _median_time(lambda: [reco.preprocess(im, batch.pedestal, batch.noise_sigma, rcfg)
                                for im in batch.images], repeats)
  t_obs = _median_time(lambda: [observables.compute(c.rows, c.cols, c.values)
                                for c in clusters], repeats)
  t_obs_plain = _median_time(lambda: [plain_observables(c.rows, c.cols, c.values)
                                      for c in clusters], repeats)
  worst = 0.0
  for c in clusters:
    a = observables.compute(c.rows, c.cols, c.values)
    b = plain_observables(c.rows, c.cols, c.values)
    for k in PLAIN_NAMES:
      worst = max(worst, abs(a[k] - b[k]) / max(abs(a[k]), 1e-9))
  n = len(clusters)
  return {
      "frames": frames, "size": size, "clusters_idbscan": n, "clusters_plain": len(plain),
      "clustering_frames_per_s": {"recoil_jax (iDBSCAN chain)": frames / t_ours,
                                  "plain (preprocess + ndimage.label)":
                                      frames / (t_plain + t_pre)},
      "clustering_clusters_per_s": {"recoil_jax (iDBSCAN chain)": n / t_ours,
                                    "plain (preprocess + ndimage.label)":
                                        len(plain) / (t_plain + t_pre)},
      "observables_clusters_per_s": {"recoil_jax (14 variables)": n / t_obs,
                                     "plain numpy (11 skeleton-free variables)":
                                         n / t_obs_plain},
      "reco_plus_observables_clusters_per_s": n / (t_ours + t_obs),
      "max_relative_difference_shared_variables": worst}


def bench_segmentation(size: int, batch: int, filters, repeats: int) -> dict:
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from recoil_jax.nn import unet  # pylint: disable=g-import-not-at-top

  x = jnp.asarray(np.random.default_rng(0).random((batch, size, size, 1)) > 0.9, jnp.float32)
  out = {}
  for kind in unet.KINDS:
    model = unet.make_unet(kind, num_classes=2, filters=filters)
    shapes = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.PRNGKey(0), x)
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
    fwd = jax.jit(functools.partial(model.apply, train=False))
    t = time.perf_counter()
    jax.block_until_ready(fwd(variables, x))
    compile_s = time.perf_counter() - t
    sec = _median_time(lambda: jax.block_until_ready(fwd(variables, x)), repeats)
    params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
    out[kind] = {"images_per_s": batch / sec, "compile_s": compile_s, "parameters": params}
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--frames", type=int, default=32)
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--seg-size", type=int, default=512)
  ap.add_argument("--seg-batch", type=int, default=2)
  ap.add_argument("--filters", default="8,16,32,64")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--json", default="")
  args = ap.parse_args(argv)
  filters = tuple(int(f) for f in args.filters.split(","))
  load = os.getloadavg()[0]
  res = {"data": "simulated", "cpus": os.cpu_count(), "load_average_1min": load,
         "reco": bench_reco(args.frames, args.size, args.repeats),
         "segmentation": {"size": args.seg_size, "batch": args.seg_batch,
                          "filters": list(filters),
                          "kinds": bench_segmentation(args.seg_size, args.seg_batch, filters,
                                                      args.repeats)}}
  r = res["reco"]
  print(f"CYGNO benchmark ({os.cpu_count()} CPUs, load {load:.1f}; simulated frames)")
  print(f"\n{r['frames']} frames of {r['size']}²: {r['clusters_idbscan']} iDBSCAN clusters, "
        f"{r['clusters_plain']} connected components")
  print("| stage | route | rate |\n|---|---|---|")
  for key, unit in (("clustering_frames_per_s", "frames/s"),
                    ("clustering_clusters_per_s", "clusters/s"),
                    ("observables_clusters_per_s", "clusters/s")):
    for route, v in r[key].items():
      print(f"| {key.split('_')[0]} | {route} | {v:.1f} {unit} |")
  print(f"| reco + observables | recoil_jax | "
        f"{r['reco_plus_observables_clusters_per_s']:.1f} clusters/s |")
  print(f"\nShared variables agree to {r['max_relative_difference_shared_variables']:.1e} "
        "(largest relative difference).")
  s = res["segmentation"]
  print(f"\nSegmentation forward, {s['size']}², batch {s['batch']}, filters {filters}:")
  print("| network | parameters | images/s | compile [s] |\n|---|---|---|---|")
  for kind, v in s["kinds"].items():
    print(f"| {kind} | {v['parameters']:,} | {v['images_per_s']:.2f} | {v['compile_s']:.1f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
