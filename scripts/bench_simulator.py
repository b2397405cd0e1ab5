"""Throughput of the toy electron-recoil simulator (recoil_jax.physics.electron_recoils).

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
  # Several settings, and the simulator of another git commit timed in the same
  # run (calls alternate between the two, so both see the same machine load):
  python scripts/bench_simulator.py --energy-kev 50 --physics none all \
      --compare-with HEAD
  # Chunks run on 1 and on 2 threads (``workers``), alternating: CPU/wall near
  # 2 means both cores were busy with the simulation.
  python scripts/bench_simulator.py --energy-kev 50 --physics none all \
      --workers 1 2
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from recoil_jax.physics.electron_recoils import simulate_electron_recoils


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
  p.add_argument("--physics", default=["none"], nargs="+",
                 help="optional physics switches of simulate_electron_recoils: "
                 "'none' (default, the baseline), 'all', or a comma list of "
                 f"{', '.join(PHYSICS_SWITCHES)}; several settings are timed "
                 "one after the other")
  p.add_argument("--compare-with", default=None, metavar="GIT_REF",
                 help="also time the simulator (and its optional physics) of this git commit "
                 "(e.g. HEAD), alternating calls with the working tree's")
  p.add_argument("--workers", type=int, nargs="+", default=None,
                 help="`workers` of simulate_electron_recoils (chunks run at "
                 "once on threads); several values are timed alternately; "
                 "default: the function's default")
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


# Where the simulator lived: recoil_jax/physics/ since the move out of the TPC study, before
# that recoil_jax/studies/tpc/ (sim.py, sim_physics.py); a --compare-with ref may be either.
_LAYOUTS = (
    {"sim": "recoil_jax/physics/electron_recoils.py",
     "sim_physics": "recoil_jax/physics/electron_recoil_physics.py",
     "imports": {"from recoil_jax.physics import electron_recoil_physics ":
                     "import _ref_tpc_sim_physics as electron_recoil_physics ",
                 "from recoil_jax.physics import electron_recoils as sim_lib":
                     "import _ref_tpc_sim as sim_lib"}},
    {"sim": "recoil_jax/studies/tpc/sim.py",
     "sim_physics": "recoil_jax/studies/tpc/sim_physics.py",
     "imports": {"from recoil_jax.studies.tpc import sim_physics ":
                     "import _ref_tpc_sim_physics as sim_physics ",
                 "from recoil_jax.studies.tpc import sim as sim_lib":
                     "import _ref_tpc_sim as sim_lib"}},
)


def _git_show(root: str, ref: str, path: str) -> str | None:
  out = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True,
                       text=True)
  return out.stdout if out.returncode == 0 else None


def load_simulator_at(ref: str):
  """simulate_electron_recoils of the simulator (and its optional physics) at git commit
  ``ref``, loaded as standalone modules (the rest of the package is the working tree's)."""
  root = subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True,
                        capture_output=True, text=True).stdout.strip()
  tmp = tempfile.mkdtemp(prefix="bench_sim_")
  names = {"sim": "_ref_tpc_sim", "sim_physics": "_ref_tpc_sim_physics"}
  for layout in _LAYOUTS:
    sources = {name: _git_show(root, ref, layout[name]) for name in names}
    if all(sources.values()):
      break
  else:
    raise SystemExit(f"--compare-with {ref}: no electron-recoil simulator at "
                     f"{[layout['sim'] for layout in _LAYOUTS]}")
  for name, mod in names.items():
    src = sources[name]
    for old, new in layout["imports"].items():
      src = src.replace(old, new)
    with open(os.path.join(tmp, mod + ".py"), "w") as f:
      f.write(src)
  sys.path.insert(0, tmp)
  spec = importlib.util.spec_from_file_location(
      names["sim"], os.path.join(tmp, names["sim"] + ".py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[names["sim"]] = module
  spec.loader.exec_module(module)
  return module.simulate_electron_recoils


def _load() -> float:
  return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


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
  if args.workers is not None and min(args.workers) < 1:
    raise SystemExit("--workers must be >= 1.")
  # name -> simulator with its `workers` bound (the --compare-with commit's
  # simulator runs with its own defaults: it may predate `workers`).
  sims = {}
  if args.compare_with:
    sims[args.compare_with] = load_simulator_at(args.compare_with)
  for w in args.workers or [None]:
    sims["current" if w is None else f"current workers={w}"] = (
        simulate_electron_recoils if w is None else
        functools.partial(simulate_electron_recoils, workers=w))
  summary = []
  for spec in args.physics:
    physics = physics_kwargs(spec, args.delta_cut_kev)
    print(f"\ntracks {args.num_tracks} at {label}, chunk_size {args.chunk_size}, "
          f"physics {physics or 'none (baseline)'}")
    times = {k: [] for k in sims}
    cpu = {k: [] for k in sims}
    loads = []
    for name, sim in sims.items():
      t0 = time.perf_counter()
      out = sim(args.seed, energies, chunk_size=args.chunk_size, **physics)
      first = time.perf_counter() - t0
      print(f"[{name}] first call (compile + run): {first:.2f} s")
    for r in range(args.repeats):
      for name, sim in sims.items():
        t0, c0 = time.perf_counter(), time.process_time()
        out = sim(args.seed + 1 + r, energies, chunk_size=args.chunk_size,
                  **physics)
        times[name].append(time.perf_counter() - t0)
        cpu[name].append(time.process_time() - c0)
        loads.append(_load())
    load_range = f"{min(loads):.1f}-{max(loads):.1f}"
    for name in sims:
      warm = float(np.median(times[name]))
      c = float(np.median(cpu[name]))
      print(f"[{name}] warm: median {warm:.3f} s over {args.repeats} calls "
            f"(min {min(times[name]):.3f} s) -> {args.num_tracks / warm:.0f} "
            f"tracks/s (best {args.num_tracks / min(times[name]):.0f}); process "
            f"CPU time: median {c:.3f} s -> {args.num_tracks / c:.0f} tracks per "
            f"CPU-second (CPU/wall {c / warm:.2f})")
      summary.append((spec, name, args.num_tracks / warm, args.num_tracks / c,
                      c / warm, load_range))
    print(f"1-min load average during the timed calls: {load_range} (other "
          "processes slow the wall time)")
    print(f"check: mean path {out.path_length_mm.mean():.1f} mm, "
          f"mean electrons {out.num_electrons.mean():.0f}, "
          f"output {out.positions_mm.nbytes / 1e6:.0f} MB"
          + (f", mean δ-rays {out.num_delta_rays.mean():.2f}"
             if out.num_delta_rays is not None else ""))
  if len(summary) > 1:
    print("\nphysics | simulator | tracks/s (wall) | tracks per CPU-second | "
          "CPU/wall | 1-min load")
    for spec, name, wall, per_cpu, ratio, load in summary:
      print(f"{spec} | {name} | {wall:.0f} | {per_cpu:.0f} | {ratio:.2f} | "
            f"{load}")


if __name__ == "__main__":
  main()
