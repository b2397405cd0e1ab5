"""Throughput of the toy electron-recoil simulator (recoil_jax.studies.tpc.sim).

Times one call to compile (the first, reported separately) and then warm calls
of ``simulate_electron_recoils`` with a fresh seed each, and prints tracks/s
with the machine (CPU count, JAX backend and devices).  No peer simulator is
available to compare with (DEGRAD is a Fortran program not installed here).

Usage:
  python scripts/bench_simulator.py --num-tracks 4096 --energy-kev 45 \
      --chunk-size 1024
  # With the optional physics (sim_physics): all of it, or a comma list of
  # delta_rays, straggling, electron_spread.
  python scripts/bench_simulator.py --energy-kev 50 --physics all
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

from recoil_jax.studies.tpc.sim import simulate_electron_recoils


def _parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num-tracks", type=int, default=4096,
                 help="tracks per timed call")
  p.add_argument("--energy-kev", type=float, nargs="+", default=[40.0, 50.0],
                 help="one energy, or two (lo hi) for energies uniform in "
                 "[lo, hi] keV")
  p.add_argument("--chunk-size", type=int, default=1024,
                 help="tracks simulated together")
  p.add_argument("--repeats", type=int, default=3, help="warm timed calls")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--physics", default="none",
                 help="optional physics switches of simulate_electron_recoils: "
                 "'none' (default, the baseline), 'all', or a comma list of "
                 f"{', '.join(PHYSICS_SWITCHES)}")
  p.add_argument("--delta-cut-kev", type=float, default=1.0,
                 help="δ-ray cut of the optional physics, keV")
  return p.parse_args()


PHYSICS_SWITCHES = ("delta_rays", "straggling", "electron_spread")


def physics_kwargs(spec: str, delta_cut_kev: float) -> dict:
  """Keyword arguments of simulate_electron_recoils for ``--physics``."""
  names = {"none": (), "all": PHYSICS_SWITCHES}.get(
      spec, tuple(n.strip() for n in spec.split(",") if n.strip()))
  unknown = set(names) - set(PHYSICS_SWITCHES)
  if unknown:
    raise SystemExit(f"--physics: unknown {sorted(unknown)}; use none, all or a "
                     f"comma list of {PHYSICS_SWITCHES}")
  kw = {n: True for n in names}
  if kw:
    kw["delta_cut_kev"] = delta_cut_kev
  return kw


def main() -> None:
  args = _parse_args()
  if len(args.energy_kev) not in (1, 2):
    raise SystemExit("--energy-kev takes one value or two (lo hi).")
  if args.num_tracks < 1 or args.repeats < 1:
    raise SystemExit("--num-tracks and --repeats must be >= 1.")
  rng = np.random.default_rng(args.seed)
  if len(args.energy_kev) == 1:
    energies = np.full(args.num_tracks, args.energy_kev[0])
    label = f"{args.energy_kev[0]:g} keV"
  else:
    lo, hi = args.energy_kev
    energies = rng.uniform(lo, hi, args.num_tracks)
    label = f"U[{lo:g}, {hi:g}] keV"

  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"devices {jax.devices()}")
  physics = physics_kwargs(args.physics, args.delta_cut_kev)
  print(f"tracks {args.num_tracks} at {label}, chunk_size {args.chunk_size}, "
        f"physics {physics or 'none (baseline)'}")

  t0 = time.perf_counter()
  out = simulate_electron_recoils(args.seed, energies,
                                  chunk_size=args.chunk_size, **physics)
  first = time.perf_counter() - t0
  times, cpu = [], []
  for r in range(args.repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = simulate_electron_recoils(args.seed + 1 + r, energies,
                                    chunk_size=args.chunk_size, **physics)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  warm = float(np.median(times))
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"first call (compile + run): {first:.2f} s; "
        f"compile ≈ {max(first - warm, 0.0):.2f} s")
  print(f"warm: median {warm:.3f} s over {args.repeats} calls "
        f"(min {min(times):.3f} s) -> {args.num_tracks / warm:.0f} tracks/s "
        f"(best {args.num_tracks / min(times):.0f})")
  print(f"process CPU time: median {np.median(cpu):.3f} s -> "
        f"{args.num_tracks / np.median(cpu):.0f} tracks per CPU-second; "
        f"1-min load average {load:.1f} (other processes slow the wall time)")
  print(f"check: mean path {out.path_length_mm.mean():.1f} mm, "
        f"mean electrons {out.num_electrons.mean():.0f}, "
        f"output {out.positions_mm.nbytes / 1e6:.0f} MB"
        + (f", mean δ-rays {out.num_delta_rays.mean():.2f}"
           if out.num_delta_rays is not None else ""))


if __name__ == "__main__":
  main()
