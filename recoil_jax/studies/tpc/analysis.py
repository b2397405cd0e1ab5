"""Figure 6 of the TPC study (arXiv 2403.15949): entries, plot and tables.

Numpy + matplotlib (Agg, through ``matplotlib.figure.Figure``: no global pyplot state).
Reproduces the paper's Figure 6 (mean cosine-similarity loss vs the fraction of
lowest-κ events cut, with the homoscedastic model and the non-ML moments baseline of
arXiv 2202.01093) as a plot and ``figure6.json`` / ``figure6.md`` tables. The
study-independent pieces (angular errors, the κ-cut efficiency curve, vMF cone
calibration and its plot, angular-error histograms) are in
``recoil_jax.analysis.direction``. Every number written here comes from simulation and is
labelled "simulated" (``recoil_jax.io.SIMULATED``) unless told otherwise.

Input structure for one test set (used by ``plot_figure6`` and ``write_table``)::

  {
    "hetero": {"cut_fractions": [...], "losses": [...]},           # vMF model curve
    "homo": {"loss": float},                                        # cosine-loss model
    "nml": {"loss": float, "efficiency": float, "failure_fraction": float},
    "nml_true_head_tail": {"loss": float, "efficiency": float},             # true head/tail
    "nml_tuned": {"loss": float, "efficiency": float, "params": {...}},  # tuned on test
  }

Every entry is optional (missing ones are left out of plots and shown as "–" in tables);
``figure6_entry`` builds the structure from per-event arrays.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
import numpy as np

from recoil_jax import io
from recoil_jax.analysis import direction

#: Cut fractions of lowest-κ events reported in the Figure 6 table.
TABLE_CUTS = (0.0, 0.10, 0.25, 0.50)
_KEYS = ("hetero", "homo", "nml", "nml_true_head_tail", "nml_tuned")
_EXTRA_KEYS = ("label", "num_events")


# --------------------------------------------------------------------------- entries


def figure6_entry(
    *,
    hetero_cos_loss: Any = None,
    hetero_kappa: Any = None,
    homo_cos_loss: Any = None,
    nml_cos_loss: Any = None,
    nml_failed: Any = None,
    nml_true_cos_loss: Any = None,
    nml_true_failed: Any = None,
    nml_tuned_cos_loss: Any = None,
    nml_tuned_failed: Any = None,
    nml_tuned_params: Mapping[str, float] | None = None,
    label: str = io.SIMULATED,
    cut_fractions: Sequence[float] = direction.DEFAULT_CUT_FRACTIONS,
) -> dict[str, Any]:
  """One test set's Figure-6 data from per-event arrays (see the module docstring).

  ``hetero_cos_loss`` / ``hetero_kappa``: ``[N]`` cosine-similarity loss and κ of the vMF
  model (its curve is ``direction.efficiency_curve`` at ``cut_fractions`` ∪
  ``TABLE_CUTS``); ``homo_cos_loss``: ``[N]`` of the homoscedastic model;
  ``nml*_cos_loss`` are ``[N]`` per-event losses of the non-ML method (values at failed
  events are ignored) and ``nml*_failed`` the ``[N]`` failure flags.
  """
  out: dict[str, Any] = {"label": label}
  if hetero_cos_loss is not None:
    if hetero_kappa is None:
      raise ValueError("figure6_entry: hetero_cos_loss needs hetero_kappa")
    fr = sorted(set(cut_fractions) | set(TABLE_CUTS))
    out["hetero"] = {"cut_fractions": list(fr),
                     "losses": direction.efficiency_curve(hetero_cos_loss, hetero_kappa,
                                                          fr).tolist(),
                     "num_events": int(np.size(hetero_cos_loss))}
  if homo_cos_loss is not None:
    homo = np.asarray(homo_cos_loss, np.float64)
    out["homo"] = {"loss": float(homo.mean()), "num_events": int(homo.size)}
  for key, loss, failed in (("nml", nml_cos_loss, nml_failed),
                            ("nml_true_head_tail", nml_true_cos_loss, nml_true_failed),
                            ("nml_tuned", nml_tuned_cos_loss, nml_tuned_failed)):
    if loss is None:
      continue
    if failed is None:
      raise ValueError(f"figure6_entry: {key}_cos_loss needs {key}_failed")
    loss = np.asarray(loss, np.float64)
    failed = np.asarray(failed, bool)
    if loss.shape != failed.shape:
      raise ValueError(f"figure6_entry: {key} loss {loss.shape} and failed "
                       f"{failed.shape} differ")
    ok = ~failed
    entry = {"loss": float(loss[ok].mean()) if ok.any() else float("nan"),
             "efficiency": float(ok.mean()), "failure_fraction": float(failed.mean()),
             "num_events": int(loss.size)}
    if key == "nml_tuned" and nml_tuned_params is not None:
      entry["params"] = {k: float(v) for k, v in nml_tuned_params.items()}
    out[key] = entry
  return out


# ------------------------------------------------------------------------------- plots


def _check_curves(curves: Mapping[str, Mapping[str, Any]]) -> None:
  if not curves:
    raise ValueError("figure 6: no test sets given")
  for name, entry in curves.items():
    unknown = set(entry) - set(_KEYS) - set(_EXTRA_KEYS)
    if unknown:
      raise ValueError(f"figure 6: test set {name!r} has unknown keys {sorted(unknown)}; "
                       f"allowed {list(_KEYS)}")
    if "hetero" in entry:
      h = entry["hetero"]
      if "cut_fractions" not in h or "losses" not in h:
        raise ValueError(f"figure 6: test set {name!r}: 'hetero' needs 'cut_fractions' "
                         "and 'losses'")
      if len(h["cut_fractions"]) != len(h["losses"]):
        raise ValueError(f"figure 6: test set {name!r}: 'hetero' cut_fractions and "
                         "losses differ in length")
    for key in ("homo", "nml", "nml_true_head_tail", "nml_tuned"):
      if key in entry and "loss" not in entry[key]:
        raise ValueError(f"figure 6: test set {name!r}: {key!r} needs 'loss'")
      if key in ("nml", "nml_true_head_tail", "nml_tuned") and key in entry and (
          "efficiency" not in entry[key]):
        raise ValueError(f"figure 6: test set {name!r}: {key!r} needs 'efficiency'")


def _draw_figure6(ax: Axes, name: str, entry: Mapping[str, Any], label: str) -> None:
  if "hetero" in entry:
    h = entry["hetero"]
    ax.plot(100 * np.asarray(h["cut_fractions"]), h["losses"], color="tab:blue", lw=1.8,
            label="heteroscedastic (vMF), κ cut")
  if "homo" in entry:
    ax.plot([0], [entry["homo"]["loss"]], marker="D", color="tab:red", ls="none", ms=8,
            label="homoscedastic")
  if "nml" in entry:
    e = entry["nml"]
    x = 100 * (1 - e["efficiency"])
    failed_pct = 100 * e.get("failure_fraction", 1 - e["efficiency"])
    ax.plot([x], [e["loss"]], marker="o", color="tab:orange", ls="none", ms=8,
            label=f"non-ML (skewness), {failed_pct:.1f}% failed")
    if "nml_true_head_tail" in entry:
      t = entry["nml_true_head_tail"]
      xt = 100 * (1 - t["efficiency"])
      ax.annotate("", xy=(xt, t["loss"]), xytext=(x, e["loss"]),
                  arrowprops=dict(arrowstyle="->", color="tab:orange", lw=1.5))
      ax.plot([xt], [t["loss"]], marker="_", color="tab:orange", ls="none", ms=12,
              label="non-ML, true head/tail")
  elif "nml_true_head_tail" in entry:
    t = entry["nml_true_head_tail"]
    ax.plot([100 * (1 - t["efficiency"])], [t["loss"]], marker="v", color="tab:orange",
            ls="none", label="non-ML, true head/tail")
  if "nml_tuned" in entry:
    g = entry["nml_tuned"]
    ax.plot([100 * (1 - g["efficiency"])], [g["loss"]], marker="*", color="black",
            ls="none", ms=13, label="non-ML, grid-searched parameters")
  ax.set_xlabel("events cut (%)")
  ax.set_ylabel("cosine-similarity loss")
  ax.set_xlim(-2, 100)
  ys = [v for line in ax.lines for v in np.asarray(line.get_ydata(), np.float64).ravel()
        if np.isfinite(v)]
  ax.set_ylim(-1.02, max(0.05, max(ys, default=0.0) + 0.05))
  ax.grid(alpha=0.3)
  ax.set_title(f"{name} ({label})", fontsize=10)
  ax.legend(fontsize=7, loc="upper right")


def plot_figure6(target: str | os.PathLike | Axes | Sequence[Axes],
                 curves: Mapping[str, Mapping[str, Any]], *, label: str = io.SIMULATED
                 ) -> Any:
  """The paper's Figure 6 (arXiv 2403.15949): one panel per test set.

  Args:
    target: a PNG path (a figure with one panel per test set is written atomically), one
      Axes (one test set only), or a sequence of Axes (one per test set, in order).
    curves: ``{test_set_name: entry}`` (see the module docstring).
    label: data label shown in every title (e.g. "simulated").

  Returns:
    The absolute path written, or the Axes drawn on.
  """
  _check_curves(curves)
  items = list(curves.items())
  if isinstance(target, Axes):
    if len(items) != 1:
      raise ValueError(f"plot_figure6: one Axes given for {len(items)} test sets")
    _draw_figure6(target, *items[0], label)
    return target
  if isinstance(target, (str, os.PathLike)):
    fig = Figure(figsize=(5.2 * len(items), 4.2), layout="constrained")
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    for ax, (name, entry) in zip(axes, items):
      _draw_figure6(ax, name, entry, label)
    return io.save_figure_atomic(fig, target, dpi=120)
  axes = list(target)
  if len(axes) != len(items):
    raise ValueError(f"plot_figure6: {len(axes)} Axes for {len(items)} test sets")
  for ax, (name, entry) in zip(axes, items):
    _draw_figure6(ax, name, entry, label)
  return axes


# ------------------------------------------------------------------------------ tables


def _fmt(x: Any, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "–"
  return f"{x:.{digits}f}"


def _hetero_at(name: str, entry: Mapping[str, Any], cut: float) -> float | None:
  if "hetero" not in entry:
    return None
  fr = np.asarray(entry["hetero"]["cut_fractions"], np.float64)
  hit = np.flatnonzero(np.abs(fr - cut) < 1e-9)
  if hit.size == 0:
    raise ValueError(f"write_table: test set {name!r}: hetero curve has no point at "
                     f"cut {cut:g} (needs {list(TABLE_CUTS)})")
  return float(entry["hetero"]["losses"][hit[0]])


def _hetero_at_efficiency(entry: Mapping[str, Any], efficiency: float | None) -> float | None:
  """vMF loss after removing the lowest-κ fraction 1 − ``efficiency`` (linear in the curve).

  This is Figure 6's fair comparison: the non-ML method is scored only on the events where
  it does not fail, so the network is scored on the same fraction of events.
  """
  if "hetero" not in entry or efficiency is None:
    return None
  fr = np.asarray(entry["hetero"]["cut_fractions"], np.float64)
  cut = 1.0 - float(efficiency)
  if not fr[0] <= cut <= fr[-1]:
    return None  # Outside the computed curve: no extrapolation.
  return float(np.interp(cut, fr, np.asarray(entry["hetero"]["losses"], np.float64)))


def write_table(results: Mapping[str, Any], workdir: str | os.PathLike, *,
                label: str = io.SIMULATED) -> tuple[str, str]:
  """Write ``figure6.json`` and ``figure6.md`` into ``workdir``.

  The markdown table has one row per test set: the heteroscedastic loss at 0/10/25/50 %
  of lowest-κ events cut and at the non-ML method's efficiency (the fair comparison),
  the homoscedastic loss, the non-ML loss with its efficiency,
  with true head/tail, and with grid-searched parameters (with efficiency). Every
  number carries ``label`` ("simulated").

  Args:
    results: ``{test_set_name: entry}`` or ``{"test_sets": {...}, **metadata}`` (see
      the module docstring); metadata goes into the JSON unchanged.
    workdir: existing or new directory.
    label: data label written into both files.

  Returns:
    (json path, markdown path), both absolute; each file is written atomically.
  """
  if "test_sets" in results:
    sets = results["test_sets"]
    metadata = {k: v for k, v in results.items() if k != "test_sets"}
  else:
    sets, metadata = results, {}
  _check_curves(sets)
  rows = {}
  for name, entry in sets.items():
    row: dict[str, Any] = {f"hetero_cut_{int(round(100 * c))}pct":
                           _hetero_at(name, entry, c) for c in TABLE_CUTS}
    row["hetero_at_nml_efficiency"] = _hetero_at_efficiency(
        entry, entry.get("nml", {}).get("efficiency"))
    row["homo"] = entry.get("homo", {}).get("loss")
    for key in ("nml", "nml_true_head_tail", "nml_tuned"):
      e = entry.get(key, {})
      row[key] = e.get("loss")
      row[f"{key}_efficiency"] = e.get("efficiency")
    if "nml" in entry:
      row["nml_failure_fraction"] = entry["nml"].get(
          "failure_fraction", 1 - entry["nml"]["efficiency"])
    if "nml_tuned" in entry and "params" in entry["nml_tuned"]:
      row["nml_tuned_params"] = dict(entry["nml_tuned"]["params"])
    rows[name] = row
  doc = {
      "label": label,
      "note": ("Metric = mean cosine-similarity loss (−1 perfect, 0 random) on "
               f"{label} test sets. Non-ML losses are over non-failed events "
               "(efficiency = fraction not failed)."),
      "metadata": metadata,
      "table": rows,
      "test_sets": sets,
  }
  json_path = io.write_json_atomic(os.path.join(os.fspath(workdir), "figure6.json"), doc)
  header = [f"test set ({label})"] + [f"vMF, {int(round(100 * c))}% cut"
                                      for c in TABLE_CUTS]
  header += ["vMF at the non-ML efficiency", "homoscedastic", "non-ML (eff.)",
             "non-ML true head/tail", "non-ML grid-searched (eff.)"]
  lines = [
      f"# Figure 6 table ({label})",
      "",
      f"Mean cosine-similarity loss (−1 perfect, 0 random) on {label} test sets; all "
      f"numbers are {label}. Non-ML: moments method, scored on non-failed events; "
      "efficiency in brackets.",
      "",
      "| " + " | ".join(header) + " |",
      "|" + "---|" * len(header),
  ]
  for name, row in rows.items():
    cells = [name] + [_fmt(row[f"hetero_cut_{int(round(100 * c))}pct"]) for c in TABLE_CUTS]
    cells.append(_fmt(row["hetero_at_nml_efficiency"]))
    cells.append(_fmt(row["homo"]))
    for key in ("nml", "nml_true_head_tail", "nml_tuned"):
      if row[key] is None:
        cells.append("–")
      elif key == "nml_true_head_tail":
        cells.append(_fmt(row[key]))
      else:
        cells.append(f"{_fmt(row[key])} ({_fmt(row[key + '_efficiency'])})")
    lines.append("| " + " | ".join(cells) + " |")
  params = {n: r["nml_tuned_params"] for n, r in rows.items() if "nml_tuned_params" in r}
  if params:
    lines += ["", "Grid-searched non-ML parameters (n_σL, n_σH, w₀ in cm):", ""]
    for n, p in params.items():
      lines.append(f"- {n}: " + ", ".join(f"{k} = {v:g}" for k, v in p.items()))
  md_path = io.write_text_atomic(os.path.join(os.fspath(workdir), "figure6.md"),
                                 "\n".join(lines) + "\n")
  return json_path, md_path
