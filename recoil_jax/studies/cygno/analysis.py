"""The source study's rejection table and plots: ER rejection at fixed NR efficiency.

Signal = NR (label 1), background = ER (label 0); scores higher = more NR-like. Working
points, Clopper–Pearson intervals, ROC and rejection plots come from the shared
``recoil_jax.analysis.classification``; this module arranges them as the thesis does
(rejection 1 − ε_B at ε_S = 40 % and 50 %, overall and per energy bin) and draws the
per-bin and feature-importance figures.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from recoil_jax import io
from recoil_jax.analysis import classification as clf

#: The thesis' table (simulation, 2–40 keV ER vs NR): ER rejection [%] at 40 / 50 % NR eff.
THESIS_REJECTION = {"RF": (99.54, 98.78), "GBC": (99.38, 98.55), "DNN": (99.43, 98.50),
                    "cuts": (83.13, None)}  # Cut-based at 50 %: garbled (≈ 57–67 %).


def working_points(scores: np.ndarray, labels: np.ndarray, efficiencies: Sequence[float]
                   ) -> dict[str, dict[str, Any]]:
  """``{f"{100ε:g}": working_point}`` at each NR efficiency (all events)."""
  s, b = scores[labels == 1], scores[labels == 0]
  return {f"{100 * e:g}": clf.working_point(s, b, e) for e in efficiencies}


def per_energy_bin(scores: np.ndarray, labels: np.ndarray, energy: np.ndarray,
                   bins: Sequence[float], efficiencies: Sequence[float]) -> list[dict]:
  """Working points in each energy bin [lo, hi) (bins with no NR or no ER are skipped)."""
  out = []
  for lo, hi in zip(bins[:-1], bins[1:]):
    sel = (energy >= lo) & (energy < hi)
    if not (np.any(sel & (labels == 1)) and np.any(sel & (labels == 0))):
      continue
    out.append({"energy_kev": [float(lo), float(hi)],
                "working_points": working_points(scores[sel], labels[sel], efficiencies)})
  return out


def _pct(p: Mapping[str, Any]) -> str:
  lo, hi = p["rejection_interval"]
  return f"{100 * p['rejection']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"


def rejection_markdown(rows: Mapping[str, Mapping[str, Any]], efficiencies=(0.4, 0.5), *,
                       label: str = io.SIMULATED, extra: Sequence[str] = ()) -> str:
  """One table: per classifier, ER rejection [%] with 68 % CP intervals, beside the thesis.

  ``rows``: ``{display name: {"thesis": key of THESIS_REJECTION or None, "points":
  working_points(...)}}``.
  """
  keys = [f"{100 * e:g}" for e in efficiencies]
  head = " | ".join(f"ER rejection at {k} % NR eff. [%] ({label})" for k in keys)
  thesis = " | ".join(f"thesis at {k} % [%]" for k in keys)
  lines = [f"| classifier | {head} | {thesis} | NR / ER test clusters |",
           "|---|" + "---|" * (2 * len(keys) + 1)]
  for name, row in rows.items():
    pts = row["points"]
    ref = THESIS_REJECTION.get(row.get("thesis") or "", ())
    refs = []
    for i, k in enumerate(keys):
      j = {"40": 0, "50": 1}.get(k)
      v = ref[j] if ref and j is not None and j < len(ref) else None
      refs.append("–" if v is None else f"{v:.2f}")
    first = next(iter(pts.values()))
    lines.append(f"| {name} | " + " | ".join(_pct(pts[k]) for k in keys) + " | "
                 + " | ".join(refs) + f" | {first['num_signal']} / {first['num_background']} |")
  lines += ["", "Intervals: Clopper–Pearson 68.27 % on the ER count at the cut. Thesis numbers: "
            "simulation, 2–40 keV, 5 000 ER / 3 000 NR per energy (its cut-based value at "
            "50 % is garbled in the slides, ≈ 57–67 %)."]
  lines += list(extra)
  return "\n".join(lines) + "\n"


def plot_per_bin(path: str, curves: Mapping[str, list[dict]], efficiency_key: str, *,
                 label: str = io.SIMULATED) -> str:
  """ER rejection vs energy bin at one NR efficiency, one line per classifier (CP bars)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(6.4, 4.8))
  ax = fig.add_subplot()
  for name, bins in curves.items():
    x, y, lo, hi = [], [], [], []
    for b in bins:
      p = b["working_points"][efficiency_key]
      x.append(0.5 * sum(b["energy_kev"]))
      y.append(100 * p["rejection"])
      lo.append(100 * (p["rejection"] - p["rejection_interval"][0]))
      hi.append(100 * (p["rejection_interval"][1] - p["rejection"]))
    ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=name)
  ax.set_xlabel("ionisation energy [keV]")
  ax.set_ylabel(f"ER rejection at {efficiency_key} % NR efficiency [%]")
  ax.set_title(f"rejection per energy bin ({label})")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return io.save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")


def plot_importances(path: str, importances: Mapping[str, Mapping[str, float]], *,
                     label: str = io.SIMULATED) -> str:
  """Horizontal bars of the feature importances of each model (``{model: {var: imp}}``)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  names = list(next(iter(importances.values())))
  fig = Figure(figsize=(6.4, 0.35 * len(names) + 1.5))
  ax = fig.add_subplot()
  h = 0.8 / len(importances)
  for i, (model, imp) in enumerate(importances.items()):
    ax.barh(np.arange(len(names)) + i * h, [imp[n] for n in names], height=h, label=model)
  ax.set_yticks(np.arange(len(names)) + 0.4 - h / 2)
  ax.set_yticklabels(names)
  ax.set_xlabel("impurity importance")
  ax.set_title(f"feature importances ({label})")
  ax.legend(fontsize=8)
  return io.save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")


def finite(x: float) -> float | None:
  return None if x is None or not math.isfinite(x) else float(x)


def write_outputs(workdir: str, results: Mapping[str, Any], markdown: str) -> None:
  """``cygno_rejection.md`` and ``cygno_analysis.json`` into the workdir (atomic)."""
  io.write_text_atomic(os.path.join(workdir, "cygno_rejection.md"), markdown)
  io.write_json_atomic(os.path.join(workdir, "cygno_analysis.json"), results)
