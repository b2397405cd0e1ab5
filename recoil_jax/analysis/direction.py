"""Study-independent analysis of predicted directions with a von Mises–Fisher uncertainty.

Numpy (float64) + matplotlib (Agg, through ``matplotlib.figure.Figure``: no global pyplot
state), shared by every direction study (the TPC electron recoils of arXiv 2403.15949; next,
KamLAND events in the spirit of KamNet, arXiv 2203.01870):

* :func:`angular_errors_deg`: angle between predicted and true directions.
* :func:`vmf_cone_angle`, :func:`cone_coverage`, :func:`binomial_error`: calibration of
  the predicted concentration κ: the fraction of true directions inside each event's
  nominal-coverage vMF cone, with its binomial standard error.
* :func:`efficiency_curve`: mean per-event loss after cutting the lowest-κ fraction of
  events (the x-axis of arXiv 2403.15949 Figure 6).
* :func:`plot_calibration`, :func:`plot_angular_error_histograms`: PNG plots, written
  atomically (``recoil_jax.io``).

Layouts: directions are ``[N, 3]`` (event, xyz; need not be unit), κ and per-event losses
``[N]``; angles in degrees unless the name says radians. Plot titles carry a data label
(``recoil_jax.io.SIMULATED`` by default).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np

from recoil_jax import io

#: Default nominal coverages of the calibration (vMF cone) checks.
DEFAULT_NOMINAL = (0.5, 0.68, 0.9, 0.95)
#: Default fractions of lowest-κ events cut for the efficiency curve: 0, 0.01, ..., 0.95.
DEFAULT_CUT_FRACTIONS = tuple(np.round(np.arange(0.0, 0.951, 0.01), 2).tolist())


def _as_vectors(name: str, a: Any) -> np.ndarray:
  """``a`` as float64 ``[N, 3]``; errors name the argument."""
  a = np.asarray(a, np.float64)
  if a.ndim != 2 or a.shape[1] != 3:
    raise ValueError(f"{name} must be [N, 3], got {a.shape}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} has {int(np.sum(~np.isfinite(a)))} non-finite entries")
  return a


def angular_errors_deg(pred: Any, label: Any) -> np.ndarray:
  """Angle between predicted and true directions, degrees, ``[N]`` in [0, 180].

  Uses atan2(|a × b|, a·b): accurate for small and large angles; inputs need not be unit.

  Args:
    pred: ``[N, 3]`` predicted directions.
    label: ``[N, 3]`` true directions.
  """
  a = _as_vectors("pred", pred)
  b = _as_vectors("label", label)
  if a.shape != b.shape:
    raise ValueError(f"pred {a.shape} and label {b.shape} differ in shape")
  return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.sum(a * b, 1)))


def efficiency_curve(loss: Any, kappa: Any, cut_fractions: Sequence[float]) -> np.ndarray:
  """Mean per-event loss after removing the fraction of events with lowest κ.

  For each f, the ⌊f·N⌋ events with the smallest κ are removed (stable order on ties)
  and the loss of the rest is averaged. With the cosine-similarity loss this is the curve
  of arXiv 2403.15949 Figure 6.

  Args:
    loss: ``[N]`` per-event loss, e.g. the cosine-similarity loss −ŷ·y (dimensionless).
    kappa: ``[N]`` predicted concentration.
    cut_fractions: fractions f in [0, 1) with ⌊f·N⌋ < N.

  Returns:
    ``[len(cut_fractions)]`` mean losses, float64.
  """
  loss = np.asarray(loss, np.float64)
  kappa = np.asarray(kappa, np.float64)
  if loss.ndim != 1 or loss.shape != kappa.shape or loss.size == 0:
    raise ValueError(f"efficiency_curve: loss {loss.shape} and kappa {kappa.shape} "
                     "must be equal non-empty [N]")
  for name, a in (("loss", loss), ("kappa", kappa)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"efficiency_curve: {name} has {int(np.sum(~np.isfinite(a)))} "
                       "non-finite entries")
  fr = np.asarray(cut_fractions, np.float64)
  n = loss.size
  n_cut = np.floor(fr * n + 1e-9).astype(np.int64)
  if np.any(fr < 0) or np.any(n_cut >= n):
    raise ValueError(f"efficiency_curve: cut fractions must be in [0, 1) and leave an "
                     f"event of {n}, got {fr.tolist()}")
  order = np.argsort(kappa, kind="stable")
  tail_sums = np.cumsum(loss[order][::-1])[::-1]  # tail_sums[k] = sum of loss[order][k:]
  return tail_sums[n_cut] / (n - n_cut)


def vmf_cone_angle(kappa: Any, coverage: Any) -> np.ndarray:
  """Half-angle (radians) of the vMF cone holding ``coverage`` (numpy, float64).

  Same formula as ``recoil_jax.losses.direction.vmf_cone_angle``: the u = 1 − μ·y quantile
  t = −log1p(p·expm1(−2κ))/κ and θ = 2 arcsin √(t/2); κ = 0 is the uniform sphere.

  Args:
    kappa: concentration(s) ≥ 0, any shape broadcasting with ``coverage``.
    coverage: probability(ies) p in [0, 1].
  """
  kappa = np.asarray(kappa, np.float64)
  p = np.asarray(coverage, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    t = np.where(kappa > 0, -np.log1p(p * np.expm1(-2 * kappa)) / kappa, 2 * p)
  return 2 * np.arcsin(np.sqrt(np.clip(t / 2, 0, 1)))


def cone_coverage(mu: Any, kappa: Any, y: Any,
                  nominal: Sequence[float] = DEFAULT_NOMINAL) -> np.ndarray:
  """Observed fraction of true directions inside the nominal-coverage vMF cones.

  For a calibrated model the result equals ``nominal`` within the binomial error
  √(p(1 − p)/N) (:func:`binomial_error`).

  Args:
    mu: ``[N, 3]`` predicted mean directions.
    kappa: ``[N]`` predicted concentrations (≥ 0).
    y: ``[N, 3]`` true directions.
    nominal: coverage probabilities.

  Returns:
    ``[len(nominal)]`` observed fractions.
  """
  kappa = np.asarray(kappa, np.float64)
  mu = _as_vectors("mu", mu)
  if kappa.shape != mu.shape[:1]:
    raise ValueError(f"cone_coverage: kappa {kappa.shape} must be ({mu.shape[0]},)")
  if not np.all(np.isfinite(kappa)) or np.any(kappa < 0):
    raise ValueError("cone_coverage: kappa must be finite and >= 0")
  ang = np.radians(angular_errors_deg(mu, y))
  return np.array([np.mean(ang <= vmf_cone_angle(kappa, p)) for p in nominal])


def binomial_error(p: Any, n: int) -> np.ndarray:
  """Standard error √(p(1 − p)/n) of a fraction p observed in ``n`` > 0 trials."""
  if int(n) < 1:
    raise ValueError(f"binomial_error: n must be >= 1, got {n}")
  p = np.asarray(p, np.float64)
  return np.sqrt(p * (1 - p) / int(n))


def plot_calibration(path: str | os.PathLike, coverage: Mapping[str, Any],
                     nominal: Sequence[float] | None = None, *,
                     num_events: Mapping[str, int] | None = None,
                     label: str = io.SIMULATED) -> str:
  """Observed vs nominal cone coverage, one line per test set (binomial error bars).

  Args:
    path: PNG file to write (atomically; folders created).
    coverage: ``{name: observed [len(nominal)]}``, or
      ``{name: {"nominal": [...], "observed": [...], "num_events": N}}``.
    nominal: coverage probabilities for the plain-array form.
    num_events: ``{name: N}`` for error bars in the plain-array form (optional).
    label: data label for the title.

  Returns:
    The absolute path written.
  """
  if not coverage:
    raise ValueError("plot_calibration: nothing to plot")
  fig = Figure(figsize=(4.6, 4.4), layout="constrained")
  ax = fig.subplots()
  ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="calibrated")
  for name, c in coverage.items():
    if isinstance(c, Mapping):
      for key in ("nominal", "observed"):
        if key not in c:
          raise ValueError(f"plot_calibration: {name!r} lacks {key!r}")
      nom, obs, n = c["nominal"], c["observed"], c.get("num_events")
    else:
      if nominal is None:
        raise ValueError(f"plot_calibration: {name!r} is a plain array; pass nominal=")
      nom, obs = nominal, c
      n = None if num_events is None else num_events.get(name)
    nom = np.asarray(nom, np.float64)
    obs = np.asarray(obs, np.float64)
    if nom.shape != obs.shape:
      raise ValueError(f"plot_calibration: {name!r}: nominal {nom.shape} and observed "
                       f"{obs.shape} differ")
    yerr = None if n is None else binomial_error(nom, int(n))
    ax.errorbar(nom, obs, yerr=yerr, marker="o", capsize=3, label=name)
  ax.set_xlabel("nominal coverage of the vMF cone")
  ax.set_ylabel("observed fraction inside")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_title(f"κ calibration ({label})", fontsize=10)
  ax.legend(fontsize=7)
  return io.save_figure_atomic(fig, path, dpi=120)


def plot_angular_error_histograms(path: str | os.PathLike,
                                  errors_deg: Mapping[str, Any], bins: int = 60, *,
                                  label: str = io.SIMULATED) -> str:
  """Histograms (density) of angular errors in degrees, one step line per method.

  Args:
    path: PNG file to write (atomically; folders created).
    errors_deg: ``{name: [N] angles in degrees}``.
    bins: number of bins over [0, 180]°.
    label: data label for the title.

  Returns:
    The absolute path written.
  """
  if not errors_deg:
    raise ValueError("plot_angular_error_histograms: nothing to plot")
  fig = Figure(figsize=(5.5, 4.0), layout="constrained")
  ax = fig.subplots()
  edges = np.linspace(0, 180, bins + 1)
  for name, err in errors_deg.items():
    err = np.asarray(err, np.float64)
    if err.ndim != 1 or err.size == 0 or not np.all(np.isfinite(err)):
      raise ValueError(f"plot_angular_error_histograms: {name!r} must be a non-empty "
                       "finite [N] array")
    ax.hist(err, bins=edges, density=True, histtype="step", lw=1.5,
            label=f"{name} (median {np.median(err):.1f}°)")
  ax.set_xlabel("angular error (deg)")
  ax.set_ylabel("density")
  ax.set_title(f"angular error ({label})", fontsize=10)
  ax.legend(fontsize=7)
  return io.save_figure_atomic(fig, path, dpi=120)
