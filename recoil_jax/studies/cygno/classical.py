"""The source study's non-DNN classifiers: random forest, gradient boosting, cuts, δ WPs.

* Random forest and gradient boosting, 400 trees each (scikit-learn's
  ``RandomForestClassifier`` and ``GradientBoostingClassifier``, other settings at their
  defaults, seeded), trained on the training split of a variable set; the score is the
  predicted NR probability. Their impurity-based feature importances are returned too.
* Per-variable cuts: each variable alone as a score, oriented so that NRs lie on the high
  side (the sign of median(NR) − median(ER) on the *training* split); a working point at
  NR efficiency ε is then one cut on that variable.
* The δ working points of arXiv 2007.12508 (LEMON, 5.9 keV ⁵⁵Fe ER vs 1–100 keV NR, data):
  preselection ``l_p < 6.3 cm`` (LAPA), ``ξ > 0.3`` (slimness), ``δ > 5``, then
  ``δ > 10`` (WP50) or ``δ > 11`` (WP40). δ there is in LEMON camera counts per pixel,
  so the literal thresholds mean little for another light yield: ``published_delta``
  applies them to ``delta_scale × δ`` (``delta_scale`` converts our counts to LEMON's;
  1 by default, i.e. no conversion), and ``delta_score`` gives the same preselection with
  the δ threshold left free, so working points at 40 / 50 % NR efficiency can be read off
  our simulation ("δ cut, retuned").
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recoil_jax.analysis import classification as clf
from recoil_jax.studies.cygno import observables

LAPA_MAX_MM = 63.0  # l_p < 6.3 cm.
SLIMNESS_MIN = 0.3
DELTA_PRESELECTION = 5.0
DELTA_WORKING_POINTS = {"WP50": 10.0, "WP40": 11.0}


def fit_random_forest(x: np.ndarray, y: np.ndarray, *, num_trees: int = 400, seed: int = 0,
                      n_jobs: int = 1):
  """A fitted ``RandomForestClassifier`` (``num_trees`` trees)."""
  from sklearn.ensemble import RandomForestClassifier  # pylint: disable=g-import-not-at-top
  return RandomForestClassifier(n_estimators=num_trees, random_state=seed,
                                n_jobs=n_jobs).fit(x, y)


def fit_gradient_boosting(x: np.ndarray, y: np.ndarray, *, num_trees: int = 400,
                          seed: int = 0):
  """A fitted ``GradientBoostingClassifier`` (``num_trees`` boosting stages)."""
  from sklearn.ensemble import GradientBoostingClassifier  # pylint: disable=g-import-not-at-top
  return GradientBoostingClassifier(n_estimators=num_trees, random_state=seed).fit(x, y)


def nr_probability(model, x: np.ndarray) -> np.ndarray:
  """P(NR) [N] from a fitted scikit-learn classifier (labels 0 ER, 1 NR)."""
  return model.predict_proba(x)[:, list(model.classes_).index(1)]


def cut_orientation(x_train: np.ndarray, y_train: np.ndarray) -> np.ndarray:
  """+1 / −1 per column [F]: the side (high / low) where NRs lie on the training split."""
  nr = np.median(x_train[y_train == 1], axis=0)
  er = np.median(x_train[y_train == 0], axis=0)
  return np.where(nr >= er, 1.0, -1.0)


def cut_scores(x: np.ndarray, orientation: np.ndarray) -> np.ndarray:
  """Oriented variables [N, F]: a cut ``score >= t`` on one column is a per-variable cut."""
  return x * orientation[None, :]


def _column(features: np.ndarray, name: str) -> np.ndarray:
  return features[:, observables.NAMES.index(name)]


def preselection(features: np.ndarray, *, pixel_mm: float, delta_scale: float = 1.0
                 ) -> np.ndarray:
  """bool [N]: arXiv 2007.12508's l_p < 6.3 cm, ξ > 0.3, δ > 5 (δ × ``delta_scale``)."""
  return ((_column(features, "LAPA") * pixel_mm < LAPA_MAX_MM)
          & (_column(features, "slimness") > SLIMNESS_MIN)
          & (_column(features, "delta") * delta_scale > DELTA_PRESELECTION))


def delta_score(features: np.ndarray, *, pixel_mm: float) -> np.ndarray:
  """δ for events passing the geometric preselection (l_p, ξ), below every δ otherwise."""
  d = _column(features, "delta").astype(np.float64)
  geo = ((_column(features, "LAPA") * pixel_mm < LAPA_MAX_MM)
         & (_column(features, "slimness") > SLIMNESS_MIN))
  return np.where(geo, d, d.min() - 1.0)


def published_delta(features: np.ndarray, labels: np.ndarray, *, pixel_mm: float,
                    delta_scale: float = 1.0, confidence: float = clf.ONE_SIGMA
                    ) -> dict[str, Any]:
  """NR and ER efficiencies of the literal WP50 / WP40 cuts, with Clopper–Pearson intervals."""
  pre = preselection(features, pixel_mm=pixel_mm, delta_scale=delta_scale)
  d = _column(features, "delta") * delta_scale
  out = {"delta_scale": delta_scale}
  for wp, cut in DELTA_WORKING_POINTS.items():
    passed = pre & (d > cut)
    entry = {"delta_cut": cut}
    for name, cls in (("nr", 1), ("er", 0)):
      n = int(np.sum(labels == cls))
      k = int(np.sum(passed & (labels == cls)))
      lo, hi = clf.clopper_pearson(k, n, confidence)
      entry[f"{name}_efficiency"] = k / n if n else float("nan")
      entry[f"{name}_efficiency_interval"] = [float(lo), float(hi)]
      entry[f"{name}_pass"], entry[f"num_{name}"] = k, n
    entry["er_rejection"] = 1.0 - entry["er_efficiency"]
    out[wp] = entry
  return out


def feature_importances(model, names: Sequence[str]) -> dict[str, float]:
  """``{variable: impurity importance}`` of a fitted tree ensemble (sums to 1)."""
  return {n: float(v) for n, v in zip(names, model.feature_importances_)}
