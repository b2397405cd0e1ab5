"""NML half of the TPC physics ablation: the moments method on simulated tracks with the
simulator's optional physics added one ingredient at a time (issue 15).

Rows (``--rows``): ``baseline`` (the toy, ``configs/tpc.py:toy``), ``+straggling``,
``+delta_rays``, ``+electron_spread`` (each alone on top of the baseline), and ``all`` (today's
default). A row ``NAME:elastic=S`` is row NAME with the elastic cross section of every atom
multiplied by S (``simulate_electron_recoils(elastic_scale=S)``): a sensitivity check of the
screened-Rutherford elastic model, not a physics option.  Every row simulates
the seed's 40 keV / 200 µm test set exactly as the TPC dataset builds its
``test_40keV_200um`` split (``recoil_jax.studies.tpc.dataset``: chunks of 1000 tracks,
per-chunk simulation and preprocessing seeds from ``SeedSequence(seed, (split, chunk, ·))``,
the paper's preprocessing, ``max_voxels`` of ``configs/tpc.py``), so ``--num-tracks 4000
--seed 0`` gives, in the baseline row, the test events of the ``cpu_hour`` configuration.
The rows share the baseline's random numbers (the new physics draws from separate
streams, ``sim_physics``) and the same rotations and smearing, so their differences are
not blurred by independent sampling noise.

On each row it runs the non-ML moments method (``recoil_jax.studies.tpc.moments``):
standard (skewness head/tail, n_σL 1.5, n_σH 3, w₀ 0.05 cm), true head/tail, and the
grid-searched variant on ``configs/tpc.py``'s grid (``analysis.nml_grid_*``), tuned on
the first ``--grid-events`` events *of this test set* (as the seed: "parameters which
minimize the CosineSimilarityLoss on the test set"; optimistic) and scored on all.
Scores: mean cosine distance 1 − mean cos(ŷ, y) over the events where the method does not
fail (efficiency in brackets), beside the seed's DEGRAD numbers.  All our numbers are
simulated.

Usage:
  python scripts/tpc_physics_ablation.py --num-tracks 4000 --seed 0 \\
      [--rows baseline,straggling,delta_rays,electron_spread,all,all:elastic=2]
      [--out ablation.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tpc_network_ablation  # pylint: disable=g-import-not-at-top,wrong-import-position
from recoil_jax import sweeps  # pylint: disable=g-import-not-at-top,wrong-import-position
from recoil_jax.studies.tpc import dataset as tpc_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position
from recoil_jax.studies.tpc import moments  # pylint: disable=g-import-not-at-top,wrong-import-position
from recoil_jax.studies.tpc import preprocess as tpc_preprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
from recoil_jax.physics import electron_recoils as sim  # pylint: disable=g-import-not-at-top,wrong-import-position

SPLIT = "test_40keV_200um"
CHUNK = 1000  # The dataset builder's default chunk_size (seeds are per chunk).
ROWS = {
    "baseline": {},
    "straggling": dict(straggling=True),
    "delta_rays": dict(delta_rays=True),
    "electron_spread": dict(electron_spread=True),
    "all": dict(delta_rays=True, straggling=True, electron_spread=True),
}
LABELS = {"baseline": "baseline (the toy)", "straggling": "+ straggling",
          "delta_rays": "+ δ-rays", "electron_spread": "+ electron spread",
          "all": "all (δ-rays + straggling + spread)"}
# The seed's DEGRAD numbers (REFERENCE.md §1c; mghrear/3D_Heteroscedastic_Convnet:
# test_models.ipynb): mean cosine distance of the non-ML method (efficiency).
DEGRAD = dict(standard=0.549, standard_eff=0.747, truth=0.285, tuned=0.317, tuned_eff=0.139)


def simulate_test_set(seed: int, num: int, physics: dict, max_voxels: int,
                      delta_cut_kev: float):
  """The dataset's test_40keV_200um split (voxelised) with ``physics`` switches on."""
  energy_kev, sigma_um = tpc_dataset.TEST_SPLITS[SPLIT]
  code = tpc_dataset.SPLITS.index(SPLIT)
  kw = dict(physics, delta_cut_kev=delta_cut_kev) if physics else {}
  parts, counts, num_delta, sim_s = [], tpc_preprocess.DiscardCounts(), [], 0.0
  for chunk in range(math.ceil(num / CHUNK)):
    lo, hi = chunk * CHUNK, min(num, (chunk + 1) * CHUNK)
    sim_seed = int(np.random.SeedSequence(seed, spawn_key=(code, chunk, 0))
                   .generate_state(1, np.uint32)[0])
    t0 = time.perf_counter()
    recoils = sim.simulate_electron_recoils(sim_seed, np.full(hi - lo, energy_kev), **kw)
    sim_s += time.perf_counter() - t0
    if recoils.num_delta_rays is not None:
      num_delta.append(recoils.num_delta_rays)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(code, chunk, 1)))
    tracks, c = tpc_preprocess.preprocess_tracks(
        recoils.positions_mm, recoils.num_electrons, np.full(hi - lo, energy_kev), rng,
        float(sigma_um), max_voxels)
    counts += c
    parts.append(tracks)
  v = max_voxels
  coords = np.concatenate([p.coords[:, :v] for p in parts])
  charges = np.concatenate([p.charges[:, :v] for p in parts])
  nvox = np.concatenate([p.num_voxels for p in parts])
  direction = np.concatenate([p.direction for p in parts])
  extra = dict(sim_seconds=sim_s, mean_voxels=float(nvox.mean()))
  if num_delta:
    extra["delta_rays_per_track"] = float(np.concatenate(num_delta).mean())
  return coords, charges, nvox, direction, counts, extra


def row_physics(name: str) -> dict:
  """The simulator switches of row ``name`` (``NAME`` or ``NAME:elastic=S``)."""
  base, scale = tpc_network_ablation.split_row(name, ROWS)
  physics = dict(ROWS[base])
  if ":" in name:
    physics["elastic_scale"] = scale
  return physics


def row_label(name: str) -> str:
  base, _, mod = name.partition(":")
  return LABELS[base] + (f", elastic σ × {mod.partition('=')[2]}" if mod else "")


def run_row(name: str, args, analysis) -> dict:
  t0 = time.perf_counter()
  physics = row_physics(name)
  coords, charges, nvox, direction, counts, extra = simulate_test_set(
      args.seed, args.num_tracks, physics, args.max_voxels, args.delta_cut_kev)
  row = dict(row=name, physics=physics, simulated=counts.total, kept=counts.kept,
             discards=counts.as_dict(), **extra)

  def score(key, **kw):
    res = moments.moments_directions(coords, charges, nvox, **kw)
    loss, eff = moments.mean_cosine_loss(res.directions, direction, res.failed)
    ok = ~np.asarray(res.failed)
    dist = 1.0 - np.sum(res.directions[ok] * direction[ok], -1)  # unit vectors
    row[key], row[f"{key}_eff"] = 1.0 + loss, eff
    row[f"{key}_se"] = float(dist.std(ddof=1) / math.sqrt(max(ok.sum(), 1)))

  score("standard", head_tail="skewness")
  score("truth", head_tail="truth", true_dirs=direction)
  g = min(args.grid_events, len(nvox))
  best, _ = moments.grid_search(
      coords[:g], charges[:g], nvox[:g], direction[:g], grid_nsl=tuple(analysis.nml_grid_nsl),
      grid_nsh=tuple(analysis.nml_grid_nsh), grid_w0=tuple(analysis.nml_grid_w0_cm),
      head_tail="skewness")
  params = {k: best[k] for k in ("n_sigma_l", "n_sigma_h", "w0_cm")}
  score("tuned", head_tail="skewness", **params)
  row["tuned_params"] = params
  row["seconds"] = time.perf_counter() - t0
  return row


def markdown(rows: list[dict], args) -> str:
  lines = [
      f"NML (moments method) on the 40 keV / 200 µm test set: mean cosine distance "
      f"1 − ⟨cos⟩ over the events where it does not fail (efficiency); ours are "
      f"**simulated** ({args.num_tracks} tracks, seed {args.seed}, δ-ray cut "
      f"{args.delta_cut_kev:g} keV; ± = standard error of the mean over events; the "
      f"rows share random numbers, so their differences are better determined), the "
      f"last row is the seed's DEGRAD.",
      "",
      "| tracks | kept | δ-rays / track | NML standard (eff.) | NML true head/tail | "
      "NML grid-searched on the set (eff.) | grid (n_σL, n_σH, w₀ cm) |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    p = r["tuned_params"]
    dr = f"{r['delta_rays_per_track']:.2f}" if "delta_rays_per_track" in r else "–"
    lines.append(
        f"| {row_label(r['row'])} (simulated) | {r['kept']}/{r['simulated']} | {dr} | "
        f"{r['standard']:.3f} ± {r['standard_se']:.3f} ({r['standard_eff']:.3f}) | "
        f"{r['truth']:.3f} ± {r['truth_se']:.3f} | "
        f"{r['tuned']:.3f} ± {r['tuned_se']:.3f} ({r['tuned_eff']:.3f}) | "
        f"{p['n_sigma_l']:g}, {p['n_sigma_h']:g}, {p['w0_cm']:g} |")
  d = DEGRAD
  lines.append(
      f"| DEGRAD (seed; notebook: 50 keV / 200 µm) | – | – | {d['standard']:.3f} "
      f"({d['standard_eff']:.3f}) | {d['truth']:.3f} | {d['tuned']:.3f} "
      f"({d['tuned_eff']:.3f}) | 3.0, 11, 1.62 |")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num-tracks", type=int, default=4000, help="tracks simulated per row")
  p.add_argument("--seed", type=int, default=0, help="the dataset's data.seed")
  p.add_argument("--rows", default=",".join(ROWS),
                 help=f"comma list of rows, from {list(ROWS)}")
  p.add_argument("--delta-cut-kev", type=float, default=1.0)
  p.add_argument("--grid-events", type=int, default=2000,
                 help="events of the set used to tune the grid-searched variant "
                 "(configs/tpc.py analysis.nml_grid_events)")
  p.add_argument("--out", default="", help="write the rows as JSON here")
  args = p.parse_args()
  rows = [r.strip() for r in args.rows.split(",") if r.strip()]
  if not rows:
    raise SystemExit(f"--rows: none given; known: {list(ROWS)}")
  for name in rows:
    try:
      row_physics(name)
    except ValueError as e:
      raise SystemExit(str(e)) from e
  config = sweeps.load_config_file(os.path.join(REPO_ROOT, "configs", "tpc.py")).get_config()
  args.max_voxels = int(config.data.max_voxels)

  import jax  # pylint: disable=g-import-not-at-top
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
        f"backend {jax.default_backend()}; 1-min load {os.getloadavg()[0]:.1f}")
  t_start = time.perf_counter()
  results = []
  for name in rows:
    r = run_row(name, args, config.analysis)
    results.append(r)
    print(f"[{name}] {r['seconds']:.0f} s (simulation {r['sim_seconds']:.0f} s): kept "
          f"{r['kept']}/{r['simulated']}, mean voxels {r['mean_voxels']:.0f}, standard "
          f"{r['standard']:.3f} ({r['standard_eff']:.3f}), truth {r['truth']:.3f}, tuned "
          f"{r['tuned']:.3f} ({r['tuned_eff']:.3f}) {r['tuned_params']}", flush=True)
  print()
  print(markdown(results, args))
  wall = time.perf_counter() - t_start
  print(f"\nwall {wall:.0f} s; 1-min load {os.getloadavg()[0]:.1f}")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(dict(label="simulated", args=vars(args), degrad=DEGRAD, rows=results,
                     wall_seconds=wall), f, indent=1)


if __name__ == "__main__":
  main()
