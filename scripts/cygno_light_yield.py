"""Light yield and energy response of the toy LIME simulator, in LIME's terms (issue 11).

Everything here is *simulated* (``recoil_jax.studies.cygno.sim``) and reconstructed with the
study's classical chain (``recoil_jax.studies.cygno.reco``: pedestal subtraction, 1.5 σ
zero suppression, median filter 3, threshold, 4 × 4 rebin, iDBSCAN), one track per frame:

* **⁵⁵Fe**: ``--num-fe55`` 5.9 keV spots at each drift distance of ``--fe55-z-mm`` (LIME
  measured its ⁵⁵Fe source at fixed positions along the drift, arXiv 2305.06168) and over
  the default uniform z range. The *light integral* of a track is the sum of the
  pedestal-subtracted counts on the hits of the clusters matched to it (≥ 50 % of a
  cluster's hits on the track's truth pixels; CYGNO's ``sc_integral`` is the same sum over a
  supercluster). A Gaussian is fitted to the integral spectrum iteratively in ±2 σ around
  the peak: peak μ, σ and σ/E = σ/μ, with their fit errors. ``counts/keV`` = μ / 5.9.
* **Linearity**: ERs at each of ``--er-energies`` (uniform z), the mean reconstructed
  integral (a ±2 σ Gaussian core fit) per keV, against the noiseless signal per keV
  (``tracks["signal_counts"]``, inside the crop) and a straight-line fit μ = a·E + b.
* **Efficiency**: NRs (He/C/F) and ERs at each of ``--eff-energies`` keV of *ionisation*
  energy (uniform z); a track is reconstructed when ≥ 50 % of the pixels it owns in the
  truth are cluster hits (the definition of ``studies/cygno/segmentation.py``), with 68 %
  Clopper–Pearson intervals; the denominator is every simulated track.

``--set key=value`` (repeatable) overrides any ``SimConfig`` field, e.g. ``--set
saturation=False`` for the unsaturated GEM chain or ``--set acceptance=1.17e-5``.

Outputs: a table on stdout, ``<out>/cygno_light_yield.json`` and
``<out>/cygno_light_yield_fe55.png`` (the ⁵⁵Fe spectra with their Gaussian fits).

Usage (a couple of minutes on the 2-core CPU):
  python scripts/cygno_light_yield.py --out /tmp/cygno_ly [--num-fe55 300] [--set k=v]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

from recoil_jax.analysis import classification as clf  # pylint: disable=g-import-not-at-top,wrong-import-position
from recoil_jax.studies.cygno import reco  # pylint: disable=g-import-not-at-top,wrong-import-position
from recoil_jax.studies.cygno import sim  # pylint: disable=g-import-not-at-top,wrong-import-position


def _parse_sets(items: list[str]) -> dict:
  out = {}
  fields = {f.name for f in dataclasses.fields(sim.SimConfig)}
  for item in items:
    key, _, value = item.partition("=")
    if key not in fields:
      raise SystemExit(f"--set {item!r}: {key!r} is not a SimConfig field")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def one_track_config(base: sim.SimConfig, size: int, **kw) -> sim.SimConfig:
  """One track per frame starting within ~1 mm of the centre of a ``size``² crop."""
  margin = max(size * base.pixel_mm / 2 - 1.0, 0.5)
  return dataclasses.replace(base, height=size, width=size, multiplicity="fixed",
                             tracks_per_image=1, margin_mm=margin, **kw)


def reconstruct(batch: sim.CygnoImages, cfg: reco.RecoConfig) -> dict[str, np.ndarray]:
  """Per track (one per frame): light integral [counts], matched flag, owned-pixel fraction."""
  n = len(batch)
  integral = np.zeros(n)
  matched = np.zeros(n, bool)
  fraction = np.zeros(n)
  for i in range(n):
    clusters = reco.find_clusters(batch.images[i], batch.pedestal, batch.noise_sigma, cfg)
    owner = reco.match_clusters(clusters, batch.instance[i])
    hits = np.zeros(batch.images.shape[1:], bool)
    for c, k in zip(clusters, owner):
      hits[c.rows, c.cols] = True
      if k == 0:
        integral[i] += float(c.values.sum())
        matched[i] = True
    owned = batch.instance[i] == 1
    fraction[i] = hits[owned].mean() if owned.any() else 0.0
  return dict(integral=integral, matched=matched, fraction=fraction)


def gauss_core_fit(x: np.ndarray, iterations: int = 5) -> dict[str, float]:
  """Gaussian fit of the peak of ``x`` in ±2 σ (iterated; truncation-corrected moments).

  Returns μ, σ, σ/μ and their statistical errors (from the truncated-Gaussian moments:
  σ_μ = σ/√n, σ_σ = σ/√(2n) with n the entries in the window), and the window's n.
  """
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  mu = float(np.median(x))
  sig = float(1.4826 * np.median(np.abs(x - mu))) or float(np.std(x)) or 1.0
  # Var of a standard normal truncated at ±2: 1 − 2·2·φ(2)/(Φ(2) − Φ(−2)) = 0.7737.
  k_var = 0.773741
  for _ in range(iterations):
    sel = np.abs(x - mu) < 2 * sig
    if sel.sum() < 5:
      break
    mu = float(x[sel].mean())
    sig = float(x[sel].std() / np.sqrt(k_var))
  n = int((np.abs(x - mu) < 2 * sig).sum())
  return dict(mu=mu, sigma=sig, mu_err=sig / np.sqrt(max(n, 1)),
              sigma_err=sig / np.sqrt(2 * max(n, 1)), resolution=sig / mu,
              resolution_err=sig / mu * np.sqrt(1 / (2 * max(n, 1)) + sig**2 / (mu**2 * max(n, 1))),
              n_in_window=n, n=int(x.size))


def fe55_runs(base: sim.SimConfig, rc: reco.RecoConfig, num: int, z_list: list[float],
              size: int, seed: int) -> dict:
  out = {}
  for j, z in enumerate(list(z_list) + [None]):
    zr = base.z_range_mm if z is None else (z, z)
    cfg = one_track_config(base, size, nr_fraction=0.0, fe55_fraction=1.0, z_range_mm=zr)
    b = sim.simulate_images(seed + 100 + j, num, cfg)
    r = reconstruct(b, rc)
    fit = gauss_core_fit(r["integral"][r["matched"]])
    truth = b.tracks["signal_counts"].astype(np.float64)
    name = "uniform" if z is None else f"{z:g}"
    out[name] = dict(
        z_mm=list(zr), fit=fit, counts_per_kev=fit["mu"] / sim.FE55_KEV,
        counts_per_kev_err=fit["mu_err"] / sim.FE55_KEV,
        matched_fraction=float(r["matched"].mean()),
        truth_counts_per_kev=float(truth.mean() / sim.FE55_KEV),
        truth_resolution=float(truth.std() / truth.mean()),
        integrals=r["integral"][r["matched"]].tolist())
  return out


def linearity_runs(base: sim.SimConfig, rc: reco.RecoConfig, num: int,
                   energies: list[float], seed: int) -> dict:
  rows = []
  for j, e in enumerate(energies):
    size = 96 if e <= 10 else 256
    cfg = one_track_config(base, size, nr_fraction=0.0, fe55_fraction=0.0,
                           er_energy_kev=(e, e))
    b = sim.simulate_images(seed + 200 + j, num, cfg)
    r = reconstruct(b, rc)
    fit = gauss_core_fit(r["integral"][r["matched"]]) if r["matched"].sum() >= 5 else None
    truth = b.tracks["signal_counts"].astype(np.float64)
    rows.append(dict(
        energy_kev=e, crop=size, matched_fraction=float(r["matched"].mean()),
        mean_integral=float(r["integral"][r["matched"]].mean()) if r["matched"].any() else None,
        fit=fit, reco_counts_per_kev=None if fit is None else fit["mu"] / e,
        truth_counts_per_kev=float(truth.mean() / e),
        truth_resolution=float(truth.std() / truth.mean())))
  pts = [(r["energy_kev"], r["fit"]["mu"], r["fit"]["mu_err"]) for r in rows if r["fit"]]
  line = None
  if len(pts) >= 2:
    e, mu, err = map(np.asarray, zip(*pts))
    coef, cov = np.polyfit(e, mu, 1, w=1 / err, cov="unscaled")
    resid = (mu - np.polyval(coef, e)) / np.polyval(coef, e)
    line = dict(slope_counts_per_kev=float(coef[0]), slope_err=float(np.sqrt(cov[0, 0])),
                intercept_counts=float(coef[1]), intercept_err=float(np.sqrt(cov[1, 1])),
                max_abs_relative_residual=float(np.abs(resid).max()))
  return dict(points=rows, line=line)


def efficiency_runs(base: sim.SimConfig, rc: reco.RecoConfig, num: int,
                    energies: list[float], size: int, seed: int) -> dict:
  out = {"NR": [], "ER": []}
  for j, e in enumerate(energies):
    for cls, kw in (("NR", dict(nr_fraction=1.0, nr_ionisation_kev=(e, e))),
                    ("ER", dict(nr_fraction=0.0, fe55_fraction=0.0, er_energy_kev=(e, e)))):
      cfg = one_track_config(base, size, **kw)
      b = sim.simulate_images(seed + 300 + 2 * j + (cls == "ER"), num, cfg)
      r = reconstruct(b, rc)
      k = int((r["fraction"] >= 0.5).sum())
      lo, hi = clf.clopper_pearson(k, num)
      out[cls].append(dict(energy_kev=e, reconstructed=k, tracks=num, efficiency=k / num,
                           interval=[float(lo), float(hi)],
                           cluster_matched=float(r["matched"].mean())))
  return out


def plot_fe55(path: str, fe55: dict, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  hi = max(np.percentile(v["integrals"], 99.5) for v in fe55.values() if v["integrals"])
  bins = np.linspace(0, 1.3 * hi, 70)
  width = bins[1] - bins[0]
  for name, v in fe55.items():
    x = np.asarray(v["integrals"])
    if x.size == 0:
      continue
    f = v["fit"]
    label = ("z uniform" if name == "uniform" else f"z = {name} mm") + \
        f": μ = {f['mu']:.0f}, σ/E = {100 * f['resolution']:.1f} %"
    h = ax.hist(x, bins=bins, histtype="step", lw=1.3, label=label)
    xs = np.linspace(f["mu"] - 2 * f["sigma"], f["mu"] + 2 * f["sigma"], 100)
    ax.plot(xs, x.size * width / (np.sqrt(2 * np.pi) * f["sigma"]) *
            np.exp(-0.5 * ((xs - f["mu"]) / f["sigma"])**2), color=h[2][0].get_edgecolor(),
            ls="--", lw=1)
  ax.set_xlabel("reconstructed light integral [camera counts] (simulated)")
  ax.set_ylabel(f"tracks / {width:.0f} counts")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="/tmp/cygno_light_yield")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--num-fe55", type=int, default=300, help="⁵⁵Fe spots per z setting")
  p.add_argument("--fe55-z-mm", default="50,250,450", help="fixed ⁵⁵Fe drift distances")
  p.add_argument("--num-er", type=int, default=60, help="ERs per linearity energy")
  p.add_argument("--er-energies", default="3,6,10,20,40")
  p.add_argument("--num-eff", type=int, default=60, help="tracks per class and energy")
  p.add_argument("--eff-energies", default="1,2,3")
  p.add_argument("--set", action="append", default=[], help="SimConfig override k=v")
  args = p.parse_args(argv)
  t0 = time.time()
  floats = lambda s: [float(v) for v in s.split(",") if v]  # noqa: E731
  base = dataclasses.replace(sim.SimConfig(), **_parse_sets(args.set))
  rc = reco.RecoConfig()
  fe55 = fe55_runs(base, rc, args.num_fe55, floats(args.fe55_z_mm), 64, args.seed)
  lin = linearity_runs(base, rc, args.num_er, floats(args.er_energies), args.seed) \
      if args.num_er else None
  eff = efficiency_runs(base, rc, args.num_eff, floats(args.eff_energies), 64, args.seed) \
      if args.num_eff else None
  overrides = _parse_sets(args.set)
  result = dict(simulated=True, overrides=overrides, sim_config=dataclasses.asdict(base),
                nominal_counts_per_kev=base.counts_per_kev, fe55=fe55, linearity=lin,
                efficiency=eff, seconds=time.time() - t0)

  print(f"toy LIME (simulated), overrides {overrides or 'none'}; nominal unsaturated "
        f"{base.counts_per_kev:.0f} counts/keV")
  print("\n55Fe 5.9 keV (reconstructed light integral, ±2σ Gaussian core fit)")
  print(f"{'z [mm]':>10} {'peak [counts]':>16} {'counts/keV':>14} {'sigma/E [%]':>13} "
        f"{'truth c/keV':>12} {'truth s/E':>10} {'found':>6}")
  for name, v in fe55.items():
    f = v["fit"]
    print(f"{name:>10} {f['mu']:9.0f} ± {f['mu_err']:4.0f} {v['counts_per_kev']:7.0f} ± "
          f"{v['counts_per_kev_err']:4.0f} {100 * f['resolution']:6.1f} ± "
          f"{100 * f['resolution_err']:3.1f} {v['truth_counts_per_kev']:12.0f} "
          f"{100 * v['truth_resolution']:9.1f}% {100 * v['matched_fraction']:5.0f}%")
  if lin:
    print("\nER linearity (uniform z): reconstructed core mean per keV vs noiseless truth")
    for r in lin["points"]:
      f = r["fit"]
      core = "no fit" if f is None else (
          f"{f['mu']:8.0f} counts ({r['reco_counts_per_kev']:.0f}/keV, "
          f"σ/E {100 * f['resolution']:.1f} %)")
      print(f"  {r['energy_kev']:5.1f} keV: reco {core}, truth "
            f"{r['truth_counts_per_kev']:.0f}/keV, found {100 * r['matched_fraction']:.0f} %")
    if lin["line"]:
      ln = lin["line"]
      print(f"  fit: {ln['slope_counts_per_kev']:.0f} ± {ln['slope_err']:.0f} counts/keV, "
            f"intercept {ln['intercept_counts']:.0f} ± {ln['intercept_err']:.0f} counts, "
            f"max |residual| {100 * ln['max_abs_relative_residual']:.1f} %")
  if eff:
    print("\nreconstruction efficiency (≥ 50 % of owned truth pixels on cluster hits)")
    for cls, rows in eff.items():
      txt = ", ".join(f"{r['energy_kev']:g} keV {100 * r['efficiency']:.0f} % "
                      f"[{100 * r['interval'][0]:.0f}, {100 * r['interval'][1]:.0f}]"
                      for r in rows)
      print(f"  {cls}: {txt}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "cygno_light_yield.json"), "w") as f:
    json.dump(result, f, indent=1)
  title = "toy LIME ⁵⁵Fe 5.9 keV, classical reconstruction (simulated)" + \
      (f"; {overrides}" if overrides else "")
  plot_fe55(os.path.join(args.out, "cygno_light_yield_fe55.png"), fe55, title)
  print(f"\nwrote {args.out}/cygno_light_yield.json and cygno_light_yield_fe55.png "
        f"({time.time() - t0:.0f} s)")
  return result


if __name__ == "__main__":
  main()
