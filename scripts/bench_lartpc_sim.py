"""Throughput and occupancies of the toy SBND LArTPC simulator (recoil_jax.studies.sbnd.sim).

For each requested resolution, simulates events (a fresh seed per resolution,
one warm-up event first, not timed) and prints events/s (wall clock and
process CPU time; on a shared machine the CPU figure is the fairer one), the
machine and its load, and the mean per-plane occupancies of the simulated
events: active (nonzero) pixels, cosmic- and neutrino-labelled pixels, and
active pixels labelled background (noise, induction lobes, shaping tails),
beside the CosmicTagger paper's 640×1024 numbers (arXiv 2012.01301: ~11k
active, ~2.3k cosmic, ~250 neutrino pixels per plane).  Neutrino-pixel means
are over events with a neutrino.  No peer simulator is available here
(LArSoft/Wire-Cell are not installable), so there are no ratios.

The simulator runs on one core (numpy, single-threaded): CPU/wall ≈ 1 on an
idle machine, below 1 when other jobs share the cores.  ``--stages`` adds the
CPU time per simulation stage (generators, transport, drift, the per-plane
native images and their parts, pooling) of the timed events; stages nest, so
their shares do not sum to 100 %.

Usage:
  python scripts/bench_lartpc_sim.py                      # 640x1024 and 128x256
  python scripts/bench_lartpc_sim.py --resolutions 640x1024 --num-events 16
  python scripts/bench_lartpc_sim.py --signal raw           # bipolar induction
  python scripts/bench_lartpc_sim.py --resolutions 640x1024 --num-events 16 --stages
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import platform
import time

import numpy as np

from recoil_jax.studies.sbnd import sim
from recoil_jax.studies.sbnd import sim_generators
from recoil_jax.studies.sbnd import sim_tracks
from recoil_jax.studies.sbnd.sim import INTERACTIONS, PLANE_NAMES, SIGNALS, simulate_sbnd_events

# (module, function, label) timed by --stages; indented labels are parts of the
# label above them.
_STAGES = (
    (sim_generators, "cosmic_muons", "generators: cosmic muons"),
    (sim_generators, "neutrino_interaction", "generators: neutrino"),
    (sim, "_readout_pieces", "cosmic readout pieces"),
    (sim_tracks, "transport", "transport (stepping, secondaries)"),
    (sim_tracks, "step_tracks", "  step_tracks"),
    (sim, "render_deposits", "render_deposits (3 planes)"),
    (sim, "drift", "  drift: charge, diffusion, row taps"),
    (sim, "_native_plane", "  native planes (deposit, noise, truth)"),
    (sim, "wire_weights", "    wire weights"),
    (sim, "_noise_tail", "    noise threshold crossings"),
    (sim, "_grid_to_native", "    grid -> native indices"),
    (sim, "_to_rendered", "  native -> rendered indices"),
)

PAPER_640X1024 = {"active": 11_000, "cosmic": 2_300, "neutrino": 250}


def _parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--resolutions", nargs="+", default=["640x1024", "128x256"],
                 help="HxW renderings (H divides 1280 and is even, W divides 2048)")
  p.add_argument("--num-events", type=int, nargs="+", default=[12, 24],
                 help="timed events per resolution (one value for all, or one each)")
  p.add_argument("--fractions", type=float, nargs=4,
                 default=[0.25, 0.25, 0.25, 0.25],
                 help=f"interaction fractions of {INTERACTIONS}")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--signal", choices=SIGNALS, default="deconvolved",
                 help="simulated wire signal (SbndPhysics.signal)")
  p.add_argument("--stages", action="store_true",
                 help="also print the CPU time per simulation stage")
  return p.parse_args()


def _time_stages() -> dict[str, float]:
  """Wraps the _STAGES functions to accumulate their process CPU time, s."""
  totals = collections.defaultdict(float)
  for module, name, label in _STAGES:
    fn = getattr(module, name)

    @functools.wraps(fn)
    def timed(*args, _fn=fn, _label=label, **kwargs):
      start = time.process_time()
      try:
        return _fn(*args, **kwargs)
      finally:
        totals[_label] += time.process_time() - start

    setattr(module, name, timed)
  return totals


def _load() -> float:
  return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _resolution(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError as e:
    raise SystemExit(f"--resolutions: expected HxW, got {text!r}") from e
  return h, w


def main() -> None:
  args = _parse_args()
  resolutions = [_resolution(r) for r in args.resolutions]
  counts = args.num_events
  if len(counts) == 1:
    counts = counts * len(resolutions)
  if len(counts) != len(resolutions) or min(counts) < 1:
    raise SystemExit("--num-events: one value >= 1, or one per resolution.")
  print(f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"{os.cpu_count()} CPUs, load average {_load():.1f}, numpy {np.__version__}")
  stages = _time_stages() if args.stages else None
  print(f"interaction fractions {dict(zip(INTERACTIONS, args.fractions))}, "
        f"signal {args.signal!r}")
  for (h, w), n in zip(resolutions, counts):
    seed = args.seed + 1000 * h + w
    simulate_sbnd_events(seed + 1, 1, height=h, width=w, signal=args.signal,
                         interaction_fractions=args.fractions)  # warm-up
    if stages is not None:
      stages.clear()
    load_before = _load()
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    ev = simulate_sbnd_events(seed, n, height=h, width=w, signal=args.signal,
                              interaction_fractions=args.fractions)
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    print(f"\n{h}x{w}: {n} simulated events, {n / wall:.2f} events/s wall, "
          f"{n / cpu:.2f} events/s CPU ({1e3 * cpu / n:.0f} ms CPU/event, "
          f"CPU/wall {cpu / wall:.2f}, load average {load_before:.1f} -> {_load():.1f})")
    if stages is not None:
      for *_, label in _STAGES:
        seconds = stages.get(label, 0.0)
        print(f"  {label:<42}{1e3 * seconds / n:8.2f} ms CPU/event {100 * seconds / cpu:6.1f} %")
    active = (ev.images != 0).sum(axis=(2, 3))
    cosmic = (ev.labels == 1).sum(axis=(2, 3))
    neutrino = (ev.labels == 2).sum(axis=(2, 3))
    background = ((ev.images != 0) & (ev.labels == 0)).sum(axis=(2, 3))
    has_nu = ev.interaction > 0
    rows = [("active", active), ("cosmic", cosmic),
            ("neutrino", neutrino[has_nu] if has_nu.any() else neutrino),
            ("active, label 0", background)]
    print(f"  {'per plane (mean)':<20}" + "".join(f"{p:>9}" for p in PLANE_NAMES) +
          f"{'all':>9}" + ("   paper" if (h, w) == (640, 1024) else ""))
    for name, values in rows:
      paper = PAPER_640X1024.get(name) if (h, w) == (640, 1024) else None
      print(f"  {name:<20}" + "".join(f"{v:9.0f}" for v in values.mean(axis=0)) +
            f"{values.mean():9.0f}" + (f"{paper:8d}" if paper else ""))
    # Value distribution of the active pixels per plane (ADC, pooled to h x w).
    for p, name in enumerate(PLANE_NAMES):
      v = ev.images[:, p][ev.images[:, p] != 0]
      if v.size:
        q = np.percentile(np.abs(v), [10, 50, 90, 99])
        print(f"  plane {name}: negative {np.mean(v < 0):.0%}, |value| percentiles "
              f"10/50/90/99 = {q[0]:.2f} / {q[1]:.2f} / {q[2]:.1f} / {q[3]:.1f} ADC, "
              f"charge per event {np.abs(ev.images[:, p]).sum(axis=(1, 2)).mean():.3g}")
    for k, kind in enumerate(INTERACTIONS[1:], start=1):
      sel = ev.interaction == k
      if sel.any():
        print(f"  neutrino pixels/plane, {kind:<8} {neutrino[sel].mean():7.0f} "
              f"({sel.sum()} events, <E_nu> {ev.neutrino_energy_gev[sel].mean():.2f} GeV)")


if __name__ == "__main__":
  main()
