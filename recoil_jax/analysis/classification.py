"""Signal-vs-background analysis shared by studies: ROC, working points, rejection with CIs.

Numpy + scipy + matplotlib (Agg through ``matplotlib.figure.Figure``). Inputs are per-event
classifier *scores* (higher = more signal-like: a logit or a probability) split by true
class: ``signal`` [Ns] and ``background`` [Nb].

Definitions (the ones rare-event searches quote):

* A *working point* at signal efficiency ε_S keeps the events with ``score >= t``, where
  ``t`` is the ``ceil(ε_S · Ns)``-th highest signal score (so at least ε_S of the signal
  passes; ties at ``t`` may add a few).
* Background efficiency ε_B = k / Nb (k background events passing); *rejection* 1 − ε_B
  (KamNet's "¹⁰C rejection at 90 % 0νββ acceptance", arXiv 2203.01870); *rejection power*
  1 / ε_B (NEWSdm's "10⁴ rejection", arXiv 2005.13042).
* Intervals: Clopper–Pearson (exact binomial) on k / Nb at the threshold, i.e. the
  statistical error of the background count at a fixed cut (two-sided, 68.27 % by
  default); with k = 0 the rejection power has only a lower limit, 1 / upper(ε_B).
  :func:`bootstrap_working_point` also resamples the signal, so its interval includes the
  uncertainty of the threshold itself.
* AUC: the Mann–Whitney probability that a random signal event outscores a random
  background event (ties count ½).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from recoil_jax import io

ONE_SIGMA = 0.6827  # Two-sided coverage of ±1σ for a Gaussian.


def _scores(name: str, a: Any) -> np.ndarray:
  x = np.asarray(a, np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError(f"{name}: no events")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name}: {int(np.sum(~np.isfinite(x)))} non-finite scores")
  return x


def clopper_pearson(k: Any, n: Any, confidence: float = ONE_SIGMA
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Exact two-sided binomial interval ``(lower, upper)`` on the fraction ``k / n``.

  ``k = 0`` gives lower 0, ``k = n`` upper 1; ``n = 0`` gives (0, 1). Vectorised.
  """
  k = np.asarray(k, np.float64)
  n = np.asarray(n, np.float64)
  if np.any((k < 0) | (k > n)):
    raise ValueError(f"clopper_pearson: need 0 <= k <= n, got k={k}, n={n}")
  alpha = 1.0 - confidence
  with np.errstate(invalid="ignore", divide="ignore"):
    lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
  return np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)


def threshold_at_signal_efficiency(signal: Any, efficiency: float) -> float:
  """The score cut ``t`` that keeps ``ceil(efficiency · Ns)`` signal events (``score >= t``)."""
  s = np.sort(_scores("signal", signal))[::-1]
  if not 0.0 < efficiency <= 1.0:
    raise ValueError(f"signal efficiency must be in (0, 1], got {efficiency}")
  keep = max(1, math.ceil(efficiency * len(s) - 1e-9))
  return float(s[keep - 1])


def working_point(signal: Any, background: Any, signal_efficiency: float, *,
                  confidence: float = ONE_SIGMA) -> dict[str, Any]:
  """Background efficiency, rejection and rejection power at a signal efficiency.

  Returns:
    ``threshold``, ``signal_efficiency`` (achieved), ``num_signal``, ``background_pass``
    (k), ``num_background`` (Nb), ``background_efficiency`` and its Clopper–Pearson
    ``background_efficiency_interval``, ``rejection`` (1 − ε_B) with interval,
    ``rejection_power`` (1/ε_B, inf when k = 0) with interval (upper inf when k = 0),
    ``confidence``.
  """
  s, b = _scores("signal", signal), _scores("background", background)
  t = threshold_at_signal_efficiency(s, signal_efficiency)
  k, n = int(np.sum(b >= t)), len(b)
  lo, hi = (float(x) for x in clopper_pearson(k, n, confidence))
  eff = k / n
  inv = lambda x: math.inf if x == 0 else 1.0 / x  # noqa: E731
  return {"threshold": t, "signal_efficiency": float(np.mean(s >= t)),
          "target_signal_efficiency": float(signal_efficiency), "num_signal": len(s),
          "background_pass": k, "num_background": n, "background_efficiency": eff,
          "background_efficiency_interval": [lo, hi], "rejection": 1.0 - eff,
          "rejection_interval": [1.0 - hi, 1.0 - lo], "rejection_power": inv(eff),
          "rejection_power_interval": [inv(hi), inv(lo)], "confidence": confidence}


def bootstrap_working_point(signal: Any, background: Any, signal_efficiency: float, *,
                            num_resamples: int = 1000, seed: int = 0,
                            confidence: float = ONE_SIGMA) -> dict[str, Any]:
  """:func:`working_point` plus percentile bootstrap intervals (both classes resampled).

  Adds ``bootstrap``: ``{"rejection_interval", "background_efficiency_interval",
  "num_resamples", "seed"}``; each resample recomputes the threshold on resampled signal.
  """
  s, b = _scores("signal", signal), _scores("background", background)
  point = working_point(s, b, signal_efficiency, confidence=confidence)
  rng = np.random.default_rng(seed)
  b_sorted = np.sort(b)
  effs = np.empty(num_resamples)
  keep = max(1, math.ceil(signal_efficiency * len(s) - 1e-9))
  for i in range(num_resamples):
    s_i = np.sort(s[rng.integers(0, len(s), len(s))])[::-1]
    t = s_i[keep - 1]
    # Background resample as multinomial counts over the sorted events: k = Σ counts ≥ t.
    counts = rng.multinomial(len(b), np.full(len(b), 1.0 / len(b)))
    first = np.searchsorted(b_sorted, t, side="left")
    effs[i] = counts[first:].sum() / len(b)
  q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
  lo, hi = np.percentile(effs, q)
  point["bootstrap"] = {"background_efficiency_interval": [float(lo), float(hi)],
                        "rejection_interval": [float(1 - hi), float(1 - lo)],
                        "num_resamples": int(num_resamples), "seed": int(seed)}
  return point


def roc_curve(signal: Any, background: Any) -> dict[str, np.ndarray]:
  """``{"threshold", "signal_efficiency", "background_efficiency"}`` [M], thresholds
  descending over every distinct score (cut ``score >= threshold``)."""
  s, b = _scores("signal", signal), _scores("background", background)
  thresholds = np.unique(np.concatenate([s, b]))[::-1]
  s_sorted, b_sorted = np.sort(s), np.sort(b)
  passing = lambda x, t: (len(x) - np.searchsorted(x, t, side="left")) / len(x)  # noqa: E731
  return {"threshold": thresholds, "signal_efficiency": passing(s_sorted, thresholds),
          "background_efficiency": passing(b_sorted, thresholds)}


def auc(signal: Any, background: Any) -> float:
  """P(score_signal > score_background) + ½ P(equal): the area under the ROC curve."""
  s, b = _scores("signal", signal), _scores("background", background)
  ranks = stats.rankdata(np.concatenate([s, b]))  # Average ranks for ties.
  u = ranks[: len(s)].sum() - len(s) * (len(s) + 1) / 2
  return float(u / (len(s) * len(b)))


def rejection_curve(signal: Any, background: Any, signal_efficiencies: Sequence[float], *,
                    confidence: float = ONE_SIGMA) -> list[dict[str, Any]]:
  """:func:`working_point` at each signal efficiency (for rejection-vs-efficiency plots)."""
  return [working_point(signal, background, e, confidence=confidence)
          for e in signal_efficiencies]


# ----------------------------------------------------------------------------- plots


def plot_rejection(path: str | os.PathLike, curves: Mapping[str, Mapping[str, Any]], *,
                   label: str = io.SIMULATED, title: str = "") -> str:
  """Background rejection power 1/ε_B (log) vs signal efficiency, one line per curve.

  ``curves``: ``{name: {"signal": scores, "background": scores}}``. Points with no
  background passing are drawn at the Clopper–Pearson lower limit with an upward marker.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(6.4, 4.8))
  ax = fig.add_subplot()
  for name, c in curves.items():
    roc = roc_curve(c["signal"], c["background"])
    nb = len(np.asarray(c["background"]).reshape(-1))
    keep = roc["background_efficiency"] > 0
    line, = ax.plot(roc["signal_efficiency"][keep], 1 / roc["background_efficiency"][keep],
                    label=f"{name} (AUC {auc(c['signal'], c['background']):.4f})")
    zero = ~keep
    if zero.any():  # No background left: 1/ε_B > 1/upper(0 of Nb).
      limit = 1 / float(clopper_pearson(0, nb)[1])
      ax.plot([roc["signal_efficiency"][zero].max()], [limit], marker="^", ls="none",
              color=line.get_color())
  ax.set_yscale("log")
  ax.set_xlabel("signal efficiency")
  ax.set_ylabel("background rejection power 1/ε_B")
  ax.set_title(title or f"rejection vs efficiency ({label})")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  return io.save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")


def plot_score_histograms(path: str | os.PathLike, scores: Mapping[str, Any], *,
                          label: str = io.SIMULATED, bins: int = 50,
                          xlabel: str = "classifier score") -> str:
  """Normalised histograms of the score per class (``{class name: scores}``), log y."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  all_scores = np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in scores.values()])
  edges = np.linspace(all_scores.min(), all_scores.max(), bins + 1)
  fig = Figure(figsize=(6.4, 4.8))
  ax = fig.add_subplot()
  for name, v in scores.items():
    v = np.asarray(v, np.float64).reshape(-1)
    ax.hist(v, bins=edges, histtype="step", density=True, label=f"{name} ({len(v)})")
  ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("density")
  ax.set_title(f"score per class ({label})")
  ax.legend(fontsize=8)
  return io.save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")


def _fmt_interval(x: float, interval: Sequence[float], digits: int = 3) -> str:
  lo, hi = interval
  f = lambda v: "∞" if math.isinf(v) else f"{v:.{digits}g}"  # noqa: E731
  return f"{f(x)} [{f(lo)}, {f(hi)}]"


def working_points_markdown(rows: Mapping[str, Mapping[str, Any]], *,
                            label: str = io.SIMULATED) -> str:
  """A markdown table of :func:`working_point` results, one row per name."""
  lines = [f"| classifier ({label}) | signal eff. | background pass / total | rejection "
           "[CI] | rejection power 1/ε_B [CI] |", "|---|---|---|---|---|"]
  for name, p in rows.items():
    lines.append(
        f"| {name} | {100 * p['signal_efficiency']:.1f} % | {p['background_pass']} / "
        f"{p['num_background']} | {_fmt_interval(p['rejection'], p['rejection_interval'], 4)}"
        f" | {_fmt_interval(p['rejection_power'], p['rejection_power_interval'])} |")
  conf = next(iter(rows.values()))["confidence"] if rows else ONE_SIGMA
  lines.append("")
  lines.append(f"Intervals: Clopper–Pearson, {100 * conf:.2f} % two-sided, on the background "
               "count at the cut.")
  return "\n".join(lines) + "\n"
