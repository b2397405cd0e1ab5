"""Active sites per event after each regular layer of the paper trunk, on simulated tracks.

The numbers behind ``model.capacity_per_event`` in ``configs/tpc.py``: for each
test-like sample (energy, fixed σ) it simulates tracks, applies the preprocessing of the TPC
source paper (arXiv 2403.15949), runs the trunk's site rules (SparseConv k6 s2 → MaxPool 2 →
SparseConv k4 → SparseConv k3 → MaxPool 2) on one event at a time with never-overflowing
capacities, and prints the mean, 99th percentile and maximum number of active sites per event
after each layer.

  python scripts/measure_sparse_capacity.py --num-tracks 200 [--physics all]

``--physics`` turns on the simulator's optional physics (δ-rays, straggling, electron spread;
``all`` = all three, the default of ``configs/tpc.py``), whose tracks carry more voxels.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

from recoil_jax.studies.tpc import preprocess as tpc_preprocess
from recoil_jax.ops import sparse
from recoil_jax.physics import electron_recoils as electron_recoil

PHYSICS_SWITCHES = ("delta_rays", "straggling", "electron_spread")
LAYERS = ("conv k6 s2", "pool 2", "conv k4", "conv k3", "pool 2")


def sites_per_layer(coords, charges, num_voxels) -> list[int]:
  """Active sites after each regular layer for one event (all-ones kernels: sites only)."""
  st = sparse.from_padded_voxels(jnp.asarray(coords[None]), jnp.asarray(charges[None, :, None]),
                                 jnp.asarray(num_voxels[None]), (120, 120, 120))
  counts = []
  st = sparse.reference.sparse_conv(st, jnp.ones((6, 6, 6, 1, 1)), strides=2)
  counts.append(int(st.num_active))
  st = sparse.reference.sparse_max_pool(st, 2, strides=2)
  counts.append(int(st.num_active))
  st = sparse.reference.sparse_conv(st, jnp.ones((4, 4, 4, 1, 1)))
  counts.append(int(st.num_active))
  st = sparse.reference.sparse_conv(st, jnp.ones((3, 3, 3, 1, 1)))
  counts.append(int(st.num_active))
  st = sparse.reference.sparse_max_pool(st, 2, strides=2)
  counts.append(int(st.num_active))
  return counts


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num-tracks", type=int, default=200)
  p.add_argument("--max-events", type=int, default=64, help="events measured per sample")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--physics", nargs="*", default=[],
                 choices=("all",) + PHYSICS_SWITCHES,
                 help="optional simulator physics switched on (none by default)")
  args = p.parse_args()
  on = PHYSICS_SWITCHES if "all" in args.physics else tuple(args.physics)
  physics = {k: (k in on) for k in PHYSICS_SWITCHES}
  print("simulated; active sites per event after each layer: "
        + ", ".join(LAYERS) + " (input voxels first); physics on: "
        + (", ".join(on) or "none"))
  for energy, sigma in ((40.0, 200.0), (50.0, 160.0), (50.0, 443.0)):
    tracks = electron_recoil.simulate_electron_recoils(args.seed, energy,
                                                       num_tracks=args.num_tracks, **physics)
    vox, counts = tpc_preprocess.preprocess_tracks(
        tracks.positions_mm, tracks.num_electrons, tracks.energy_kev,
        np.random.default_rng(args.seed + 1), sigma_um=sigma, max_voxels=2048)
    n = min(args.max_events, vox.coords.shape[0])
    rows = np.array([[int(vox.num_voxels[i])] + sites_per_layer(
        vox.coords[i], vox.charges[i], vox.num_voxels[i]) for i in range(n)])
    print(f"{energy:.0f} keV, σ {sigma:.0f} µm ({counts.kept}/{counts.total} kept, {n} measured)")
    for name, fn in (("mean", np.mean), ("p99", lambda r, a: np.percentile(r, 99, a)),
                     ("max", np.max)):
      print(f"  {name:>4}: " + " ".join(f"{v:7.0f}" for v in fn(rows, 0)))


if __name__ == "__main__":
  main()
