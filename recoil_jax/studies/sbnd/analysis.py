"""Segmentation metrics, event selection, Figure 9 and event displays (SBND, arXiv 2012.01301).

Layouts: predictions and labels are integer ``[N, P, H, W]`` (event, plane, drift row,
wire column) with classes 0 background, 1 cosmic, 2 neutrino; images float ``[N, P, H,
W]``. Planes 0, 1 are the induction planes (U, V), plane 2 the collection plane (Y).

Metrics (the definitions of the CosmicTagger code, github.com/coreyjadams/CosmicTagger,
reported in arXiv 2012.01301 Table 2) are built from per-event
*statistics* (:func:`event_statistics`, a few numbers per event and plane, computable in
the jitted step) and reduced as exact ``(sum, count)`` pairs (:func:`metric_terms`):

* ``accuracy``: fraction of pixels whose argmax class equals the label.
* ``non_bkg_accuracy``: per event and plane, the accuracy over pixels with label ≠ 0,
  then the mean over the (event, plane) pairs that have such pixels.
* ``cosmic_iou`` / ``neutrino_iou``: per event and plane |pred ∩ label| / |pred ∪ label|
  for that class, 1 when the union is empty; mean over events and planes.
* ``mean_iou``: ½ (cosmic + neutrino), per event and plane, then the mean.
* ``pooled_cosmic_iou`` / ``pooled_neutrino_iou``: the second figure, Σ ∩ / Σ ∪ over
  every pixel of the dataset (NaN when no pixel of that class is labelled or predicted).

Counts are exact integers per image (int32) and float32 once summed.

Event selection (arXiv 2012.01301, Table 3): an event is tagged "neutrino" when every plane
has at least ``min_pixels`` neutrino-predicted pixels and the mean drift row ("mean-Y")
of those pixels agrees within ``max_row_diff`` rows for all plane pairs. The paper's 100
pixels and 50 rows are for 640×1024 images; :func:`scaled_selection_thresholds` scales
them to other resolutions.

Numbers from simulated data are labelled "simulated" (``recoil_jax.io.SIMULATED``) in
every table and figure; figures are written atomically (``recoil_jax.io``).
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np
import scipy.stats

from recoil_jax import io

CLASS_NAMES = ("background", "cosmic", "neutrino")
PLANE_NAMES = ("plane 0 (U, induction)", "plane 1 (V, induction)", "plane 2 (Y, collection)")
# Interaction types (index = interaction code of the data; -1 = unknown). Same order as
# recoil_jax.studies.sbnd.sim.INTERACTIONS (asserted in the tests).
INTERACTIONS = ("cosmic_only", "nue_cc", "numu_cc", "nc")
INTERACTION_LABELS = {"cosmic_only": "cosmic only", "nue_cc": "νe CC", "numu_cc": "νμ CC",
                      "nc": "NC"}
NEUTRINO_TYPES = ("nue_cc", "numu_cc", "nc")

# The paper's selection thresholds and the resolution they were tuned at.
PAPER_MIN_PIXELS = 100
PAPER_MAX_ROW_DIFF = 50.0
PAPER_RESOLUTION = (640, 1024)

METRIC_NAMES = ("accuracy", "non_bkg_accuracy", "cosmic_iou", "neutrino_iou", "mean_iou",
                "pooled_cosmic_iou", "pooled_neutrino_iou")
TABLE2_METRICS = ("non_bkg_accuracy", "cosmic_iou", "neutrino_iou", "mean_iou")

# arXiv 2012.01301 Table 2 (non-bkg acc., cosmic IoU, ν IoU, mean IoU), keyed by the
# variant names of configs/sbnd.py.
PAPER_TABLE2 = {
    "baseline": ("Baseline", (0.951, 0.908, 0.606, 0.757)),
    "concat": ("Concat. Connections", (0.947, 0.898, 0.609, 0.753)),
    "cross_plane_blocked": ("Cross-plane Blocked", (0.942, 0.898, 0.571, 0.734)),
    "batch2": ("Batch Size x 2", (0.956, 0.914, 0.698, 0.806)),
    "conv_upsample": ("Convolution Upsample", (0.938, 0.898, 0.539, 0.718)),
    "filters_half": ("Num. Filters / 2", (0.930, 0.887, 0.457, 0.672)),
    "no_balance": ("No Loss Balance", (0.913, 0.882, 0.544, 0.713)),
    "lr_x10": ("Larger Learning Rate", (0.896, 0.852, 0.447, 0.649)),
    "non_residual": ("Non Residual", (0.944, 0.904, 0.584, 0.744)),
    "adam": ("Adam Optimizer", (0.904, 0.852, 0.509, 0.680)),
    "full_balance": ("Full Balance", (0.940, 0.720, 0.339, 0.530)),
}
# arXiv 2012.01301 Table 3 (best network, "batch × 2").
PAPER_TABLE3 = {"nue_cc": 0.915, "numu_cc": 0.786, "nc": 0.373, "cosmic_only_rejection": 0.911}

STAT_KEYS = ("accuracy_per_plane", "nonbkg_correct", "nonbkg_total", "intersection", "union",
             "nu_pred_pixels", "nu_pred_mean_row")

_COLOURS = {1: (0.12, 0.47, 0.95), 2: (0.95, 0.12, 0.10)}  # cosmic blue, neutrino red.
_TYPE_COLOURS = {"nue_cc": "tab:blue", "numu_cc": "tab:orange", "nc": "tab:green",
                 "cosmic_only": "tab:gray"}


# ------------------------------------------------------------------------ statistics


def event_statistics(prediction: Any, labels: Any, *, xp: Any = None) -> dict[str, Any]:
  """Per-event, per-plane counts from which every metric and the selection follow.

  Works on numpy (``xp=np``) and inside jitted JAX code (``xp=jax.numpy``, the default
  for non-numpy inputs).

  Args:
    prediction: integer ``[N, P, H, W]`` predicted classes (argmax of the logits).
    labels: integer ``[N, P, H, W]`` true classes.
    xp: array namespace (numpy or jax.numpy); None = inferred from ``prediction``.

  Returns:
    float32 arrays: ``accuracy_per_plane`` ``[N, P]`` (fraction of correct pixels),
    ``nonbkg_correct`` / ``nonbkg_total`` ``[N, P]`` (pixels with label ≠ 0: correct /
    all), ``intersection`` / ``union`` ``[N, P, 2]`` (cosmic, neutrino pixel counts),
    ``nu_pred_pixels`` ``[N, P]`` (pixels predicted neutrino) and ``nu_pred_mean_row``
    ``[N, P]`` (their mean drift row, NaN when there are none).
  """
  if xp is None:
    xp = np if isinstance(prediction, np.ndarray) else _jnp()
  if prediction.ndim != 4 or prediction.shape != labels.shape:
    raise ValueError(f"prediction {prediction.shape} and labels {labels.shape} must both be "
                     "[N, P, H, W]")
  pred = prediction.astype(xp.int32)
  lab = labels.astype(xp.int32)
  height, width = pred.shape[2], pred.shape[3]
  count = lambda a: xp.sum(a.astype(xp.int32), axis=(2, 3)).astype(xp.float32)  # noqa: E731
  correct = pred == lab
  nonbkg = lab != 0
  inter, union = [], []
  for c in (1, 2):
    p, t = pred == c, lab == c
    inter.append(count(p & t))
    union.append(count(p | t))
  nu_pred = pred == 2
  nu_rows = xp.sum(nu_pred.astype(xp.int32), axis=3).astype(xp.float32)  # [N, P, H]
  nu_pixels = xp.sum(nu_rows, axis=2)
  row_sum = xp.sum(nu_rows * xp.arange(height, dtype=xp.float32), axis=2)
  mean_row = xp.where(nu_pixels > 0, row_sum / xp.maximum(nu_pixels, 1.0), xp.nan)
  return {
      "accuracy_per_plane": count(correct) / float(height * width),
      "nonbkg_correct": count(correct & nonbkg),
      "nonbkg_total": count(nonbkg),
      "intersection": xp.stack(inter, axis=-1),
      "union": xp.stack(union, axis=-1),
      "nu_pred_pixels": nu_pixels.astype(xp.float32),
      "nu_pred_mean_row": mean_row.astype(xp.float32),
  }


def _jnp():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp


def per_event_iou(stats: Mapping[str, Any], *, xp: Any = np) -> Any:
  """IoU per event, plane and class (cosmic, neutrino) ``[N, P, 2]``; 1 for an empty union."""
  inter, union = stats["intersection"], stats["union"]
  return xp.where(union > 0, inter / xp.maximum(union, 1.0), 1.0)


def metric_terms(stats: Mapping[str, Any], mask: Any, *, xp: Any = None
                 ) -> dict[str, tuple[Any, Any]]:
  """Exact ``{metric: (sum, count)}`` over the real events (``mask`` 1) of a batch or set.

  Args:
    stats: :func:`event_statistics` of the events.
    mask: ``[N]`` 1 for real events, 0 for padding.
    xp: numpy or jax.numpy (None = inferred from ``mask``).

  Returns:
    float32 pairs for every name in ``METRIC_NAMES``; the metric is ``sum / count``
    (summed over batches and devices first).
  """
  if xp is None:
    xp = np if isinstance(mask, np.ndarray) else _jnp()
  m = mask.astype(xp.float32)
  mp = m[:, None]
  num_planes = stats["accuracy_per_plane"].shape[1]
  pairs = xp.float32(num_planes) * xp.sum(m)
  total, correct = stats["nonbkg_total"], stats["nonbkg_correct"]
  valid = (total > 0).astype(xp.float32)
  nonbkg_acc = xp.where(total > 0, correct / xp.maximum(total, 1.0), 0.0)
  iou = per_event_iou(stats, xp=xp)
  inter, union = stats["intersection"], stats["union"]
  return {
      "accuracy": (xp.sum(mp * stats["accuracy_per_plane"]), pairs),
      "non_bkg_accuracy": (xp.sum(mp * nonbkg_acc), xp.sum(mp * valid)),
      "cosmic_iou": (xp.sum(mp * iou[..., 0]), pairs),
      "neutrino_iou": (xp.sum(mp * iou[..., 1]), pairs),
      "mean_iou": (xp.sum(mp * 0.5 * (iou[..., 0] + iou[..., 1])), pairs),
      "pooled_cosmic_iou": (xp.sum(mp * inter[..., 0]), xp.sum(mp * union[..., 0])),
      "pooled_neutrino_iou": (xp.sum(mp * inter[..., 1]), xp.sum(mp * union[..., 1])),
  }


def exact_metrics(stats: Mapping[str, Any], mask: Any = None) -> dict[str, float]:
  """Every metric of ``METRIC_NAMES`` over a whole set of events (float64, on the host)."""
  stats = {k: np.asarray(stats[k], np.float64) for k in STAT_KEYS}
  n = stats["accuracy_per_plane"].shape[0]
  mask = np.ones((n,), np.float64) if mask is None else np.asarray(mask, np.float64)
  out = {}
  for name, (s, c) in metric_terms(stats, mask, xp=np).items():
    out[name] = float(s) / float(c) if c else float("nan")
  return out


# ------------------------------------------------------------------------- selection


def scaled_selection_thresholds(height: int, width: int, *,
                                min_pixels: float = PAPER_MIN_PIXELS,
                                max_row_diff: float = PAPER_MAX_ROW_DIFF,
                                reference: Sequence[int] = PAPER_RESOLUTION
                                ) -> tuple[float, float]:
  """The paper's thresholds at another image size: ``(min_pixels, max_row_diff)``.

  The mean-row tolerance is a distance along the drift axis, so it scales with the
  number of rows, ``H / H_ref``. Neutrino activity is mostly tracks (1-D objects) whose
  pixel count scales with the linear resolution, taken as the geometric mean
  ``√((H / H_ref)(W / W_ref))``; showers, which are partly 2-D, lose pixels faster, so at
  low resolution the scaled cut is slightly looser for νe CC than the paper's. Measured
  on 32 simulated ν events (``lartpc``, seed 3; 226 ν pixels per plane at 640×1024): the
  mean ν pixel count drops by 2.16 / 4.68 / 8.85 at 320×512 / 128×256 / 64×128, against
  2.0 / 4.47 / 8.94 for this linear rule and 4 / 20 / 80 for an area rule.

  Args:
    height, width: image size (rows, wires) per plane.
    min_pixels, max_row_diff: thresholds at ``reference``.
    reference: (rows, wires) the thresholds were tuned at (the paper's 640×1024).
  """
  if height < 1 or width < 1:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  h_ratio = height / reference[0]
  linear = math.sqrt(h_ratio * width / reference[1])
  return float(min_pixels) * linear, float(max_row_diff) * h_ratio


def select_events(nu_pred_pixels: Any, nu_pred_mean_row: Any, *, min_pixels: float,
                  max_row_diff: float) -> np.ndarray:
  """The paper's neutrino selection: bool ``[N]``.

  Args:
    nu_pred_pixels: ``[N, P]`` pixels predicted neutrino per plane.
    nu_pred_mean_row: ``[N, P]`` mean drift row of those pixels (NaN if none).
    min_pixels: every plane needs at least this many (> 0).
    max_row_diff: largest allowed |mean row difference| over all plane pairs (rows).
  """
  if not min_pixels > 0:
    raise ValueError(f"selection min_pixels must be > 0, got {min_pixels}")
  if not max_row_diff >= 0:
    raise ValueError(f"selection max_row_diff must be >= 0, got {max_row_diff}")
  pixels = np.asarray(nu_pred_pixels, np.float64)
  rows = np.asarray(nu_pred_mean_row, np.float64)
  if pixels.ndim != 2 or rows.shape != pixels.shape:
    raise ValueError(f"nu_pred_pixels {pixels.shape} and nu_pred_mean_row {rows.shape} must "
                     "both be [N, P]")
  selected = np.all(pixels >= min_pixels, axis=1)
  for a, b in itertools.combinations(range(pixels.shape[1]), 2):
    with np.errstate(invalid="ignore"):
      selected &= np.abs(rows[:, a] - rows[:, b]) <= max_row_diff  # NaN compares False.
  return selected


def binomial(k: int, n: int, *, confidence: float = 0.6827) -> dict[str, Any]:
  """A fraction k/n with its standard error √(p(1−p)/n) and Clopper–Pearson interval."""
  if n <= 0:
    return {"k": int(k), "n": int(n), "fraction": None, "error": None, "interval": None}
  p = k / n
  alpha = 1.0 - confidence
  lo = 0.0 if k == 0 else float(scipy.stats.beta.ppf(alpha / 2, k, n - k + 1))
  hi = 1.0 if k == n else float(scipy.stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
  return {"k": int(k), "n": int(n), "fraction": p, "error": math.sqrt(p * (1 - p) / n),
          "interval": [lo, hi], "confidence": confidence}


def selection_table(selected: Any, interaction: Any) -> dict[str, Any]:
  """Table 3: efficiency per neutrino type and cosmic-only rejection.

  Args:
    selected: bool ``[N]`` from :func:`select_events`.
    interaction: int ``[N]`` index into ``INTERACTIONS`` (-1 = unknown, ignored).

  Returns:
    ``{"nue_cc": binomial, "numu_cc": ..., "nc": ..., "all_neutrino": ...,
    "cosmic_only_rejection": binomial of not selected cosmic-only events,
    "unknown_events": count}``; fractions are None for types without events.
  """
  sel = np.asarray(selected, bool)
  code = np.asarray(interaction, np.int64)
  if sel.shape != code.shape or sel.ndim != 1:
    raise ValueError(f"selected {sel.shape} and interaction {code.shape} must both be [N]")
  bad = (code < -1) | (code >= len(INTERACTIONS))
  if bad.any():
    raise ValueError(f"interaction codes must be in [-1, {len(INTERACTIONS)}), got "
                     f"{sorted(set(code[bad].tolist()))}")
  out: dict[str, Any] = {}
  for i, name in enumerate(INTERACTIONS):
    if name == "cosmic_only":
      continue
    out[name] = binomial(int(np.sum(sel & (code == i))), int(np.sum(code == i)))
  nu = code >= 1
  out["all_neutrino"] = binomial(int(np.sum(sel & nu)), int(np.sum(nu)))
  cosmic = code == 0
  out["cosmic_only_rejection"] = binomial(int(np.sum(~sel & cosmic)), int(np.sum(cosmic)))
  out["unknown_events"] = int(np.sum(code == -1))
  return out


# ------------------------------------------------------------------------- Figure 9


def iou_vs_energy(stats: Mapping[str, Any], interaction: Any, energy_gev: Any,
                  bin_edges_gev: Sequence[float]) -> dict[str, Any]:
  """Figure 9's curves: mean per-event IoU in neutrino-energy bins, per interaction type.

  The per-event IoU is averaged over planes (1 for an empty union). Events outside the
  bins are counted in ``outside``.

  Returns:
    ``{"bin_edges_gev": [...], "types": {type: {"n": [...], "neutrino_iou": [...],
    "neutrino_iou_error": [...], "cosmic_iou": [...], "cosmic_iou_error": [...],
    "outside": int}}}`` with None for empty bins; errors are standard errors of the mean
    (None with fewer than two events).
  """
  edges = np.asarray(bin_edges_gev, np.float64)
  if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
    raise ValueError(f"bin_edges_gev must be increasing with >= 2 edges, got {edges}")
  iou = per_event_iou({k: np.asarray(stats[k], np.float64)
                       for k in ("intersection", "union")}).mean(axis=1)  # [N, 2]
  code = np.asarray(interaction, np.int64)
  energy = np.asarray(energy_gev, np.float64)
  types = {}
  for t in NEUTRINO_TYPES:
    sel = code == INTERACTIONS.index(t)
    which = np.digitize(energy[sel], edges) - 1  # Bin index; outside = -1 or len-1.
    inside = (which >= 0) & (which < edges.size - 1) & np.isfinite(energy[sel])
    entry: dict[str, Any] = {"n": [], "outside": int(np.sum(~inside))}
    for key in ("neutrino_iou", "cosmic_iou"):
      entry[key], entry[f"{key}_error"] = [], []
    for b in range(edges.size - 1):
      vals = iou[sel][inside & (which == b)]
      entry["n"].append(int(len(vals)))
      for j, key in ((1, "neutrino_iou"), (0, "cosmic_iou")):
        v = vals[:, j]
        entry[key].append(float(v.mean()) if len(v) else None)
        entry[f"{key}_error"].append(
            float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None)
    types[t] = entry
  return {"bin_edges_gev": edges.tolist(), "types": types}


def plot_figure9(path: str | os.PathLike, curves: Mapping[str, Any], *,
                 label: str = io.SIMULATED) -> str:
  """Figure 9 as a PNG: ν IoU (solid) and cosmic IoU (dashed) vs neutrino energy per type.

  Written atomically to ``path``; returns the absolute path.
  """
  edges = np.asarray(curves["bin_edges_gev"], np.float64)
  centres = 0.5 * (edges[1:] + edges[:-1])
  fig = Figure(figsize=(7.5, 5.6))
  ax = fig.add_subplot()
  for t, entry in curves["types"].items():
    for key, style in (("neutrino_iou", "-"), ("cosmic_iou", "--")):
      y = np.array([np.nan if v is None else v for v in entry[key]])
      err = np.array([0.0 if v is None else v for v in entry[f"{key}_error"]])
      if np.all(np.isnan(y)):
        continue
      kind = "ν" if key == "neutrino_iou" else "cosmic"
      ax.errorbar(centres, y, yerr=err, fmt="o" + style, ms=3, capsize=2,
                  color=_TYPE_COLOURS[t], label=f"{INTERACTION_LABELS[t]}: {kind} IoU")
  ax.set(xlabel="Neutrino energy [GeV]", ylabel="Intersection / Union", ylim=(0.0, 1.02),
         xlim=(edges[0], edges[-1]),
         title=f"IoU vs neutrino energy per interaction type ({label})")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.13))  # Off the data.
  fig.tight_layout()
  return io.save_figure_atomic(fig, path, dpi=110)


# ------------------------------------------------------------------------- tables


def _fmt(x: Any, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "–"
  return f"{x:.{digits}f}"


def _fmt_binomial(b: Mapping[str, Any]) -> str:
  if b.get("fraction") is None:
    return "– (no events)"
  return (f"{100 * b['fraction']:.1f} ± {100 * b['error']:.1f} % "
          f"({b['k']}/{b['n']})")


def selection_markdown(table: Mapping[str, Any], thresholds: Mapping[str, Any], *,
                       label: str = io.SIMULATED) -> str:
  """Table 3 as markdown, beside the paper's numbers."""
  lines = [
      f"Event selection ({label}): ≥ {thresholds['min_pixels']:.4g} neutrino-tagged pixels "
      f"per plane and mean drift row within {thresholds['max_row_diff']:.4g} rows for all "
      f"plane pairs (paper: 100 pixels, 50 rows at 640×1024; here "
      f"{thresholds['height']}×{thresholds['width']}). Errors: binomial standard error.",
      "",
      f"| category | selection ({label}) | paper (arXiv 2012.01301 Table 3) |",
      "|---|---|---|",
  ]
  for t in NEUTRINO_TYPES:
    lines.append(f"| {INTERACTION_LABELS[t]} efficiency | {_fmt_binomial(table[t])} | "
                 f"{100 * PAPER_TABLE3[t]:.1f} % |")
  lines.append(f"| all neutrino efficiency | {_fmt_binomial(table['all_neutrino'])} | – |")
  lines.append(f"| cosmic-only rejection | {_fmt_binomial(table['cosmic_only_rejection'])} | "
               f"{100 * PAPER_TABLE3['cosmic_only_rejection']:.1f} % |")
  return "\n".join(lines) + "\n"


def figure9_markdown(curves: Mapping[str, Any], *, label: str = io.SIMULATED) -> str:
  """Figure 9's points as a markdown table (mean ± standard error, events per bin)."""
  edges = curves["bin_edges_gev"]
  header = "| E_ν [GeV] | " + " | ".join(
      f"{INTERACTION_LABELS[t]} ν IoU | {INTERACTION_LABELS[t]} cosmic IoU | n"
      for t in curves["types"]) + " |"
  lines = [f"IoU vs neutrino energy ({label}; per-event IoU averaged over planes, mean ± "
           "standard error per bin)", "", header,
           "|---|" + "---|---|---|" * len(curves["types"])]
  for b in range(len(edges) - 1):
    cells = [f"{edges[b]:.2f}–{edges[b + 1]:.2f}"]
    for entry in curves["types"].values():
      for key in ("neutrino_iou", "cosmic_iou"):
        v, e = entry[key][b], entry[f"{key}_error"][b]
        cells.append("–" if v is None else f"{v:.3f}" + ("" if e is None else f" ± {e:.3f}"))
      cells.append(str(entry["n"][b]))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def metrics_markdown(metrics: Mapping[str, Mapping[str, float]], *,
                     label: str = io.SIMULATED) -> str:
  """Per-split metrics beside the paper's baseline row (Table 2)."""
  _, paper = PAPER_TABLE2["baseline"]
  lines = [f"Segmentation metrics ({label}; per event and plane, IoU = 1 for an empty "
           "union; pooled = Σ∩/Σ∪ over all pixels)", "",
           "| split | " + " | ".join(METRIC_NAMES) + " |",
           "|---|" + "---|" * len(METRIC_NAMES)]
  for split, m in metrics.items():
    lines.append(f"| {split} ({label}) | " + " | ".join(_fmt(m.get(k)) for k in METRIC_NAMES)
                 + " |")
  paper_cells = dict(zip(TABLE2_METRICS, paper))
  lines.append("| paper baseline (Table 2) | " + " | ".join(
      _fmt(paper_cells.get(k)) for k in METRIC_NAMES) + " |")
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- displays


def _max_pool(a: np.ndarray, f: int) -> np.ndarray:
  """Max over f×f blocks of a 2-D array (zero-padded to a multiple of f)."""
  if f <= 1:
    return a
  h, w = a.shape
  ph, pw = -h % f, -w % f
  a = np.pad(a, ((0, ph), (0, pw)))
  return a.reshape((h + ph) // f, f, (w + pw) // f, f).max(axis=(1, 3))


def _overlay(classes: np.ndarray, alpha: float = 1.0) -> np.ndarray:
  rgba = np.zeros(classes.shape + (4,), np.float32)
  for c, colour in _COLOURS.items():
    rgba[classes == c] = (*colour, alpha)
  return rgba


def _zoom_box(truth: np.ndarray, pred: np.ndarray | None, margin: int, min_size: int
              ) -> tuple[slice, slice]:
  """Rows/columns around the truth ∪ predicted neutrino pixels of one plane (or all)."""
  nu = truth == 2
  if pred is not None:
    nu = nu | (pred == 2)
  h, w = truth.shape
  if not nu.any():
    return slice(0, h), slice(0, w)
  rows, cols = np.flatnonzero(nu.any(1)), np.flatnonzero(nu.any(0))
  out = []
  for lo, hi, size in ((rows[0], rows[-1], h), (cols[0], cols[-1], w)):
    lo, hi = lo - margin, hi + 1 + margin
    if hi - lo < min_size:
      pad = (min_size - (hi - lo)) // 2 + 1
      lo, hi = lo - pad, hi + pad
    out.append(slice(max(0, lo), min(size, hi)))
  return out[0], out[1]


def plot_event_display(path: str | os.PathLike, image: Any, label: Any,
                       prediction: Any = None, *, title: str = "",
                       data_label: str = io.SIMULATED, zoom: bool = False,
                       max_panel_pixels: int = 512, vertex: Any = None) -> str:
  """The three planes of one event: charge, truth overlaid, prediction overlaid.

  Rows: the wire-plane image (|ADC|, grey, scaled per plane to its 99th percentile:
  induction signals are bipolar), the true labels over the faded image and
  (if given) the predicted labels over the faded image; columns: planes U, V, Y. Cosmic
  pixels are blue, neutrino pixels red. Large planes are max-pooled to at most
  ``max_panel_pixels`` per side so that thin tracks stay visible. With ``zoom`` every
  plane is cropped to its neutrino pixels (truth ∪ prediction) plus a margin.

  Args:
    path: output PNG (folders created).
    image: float ``[P, H, W]``.
    label: integer ``[P, H, W]`` true classes.
    prediction: integer ``[P, H, W]`` predicted classes, or None.
    title: figure title (the data label is appended).
    data_label: e.g. "simulated".
    zoom: crop to the neutrino activity of each plane.
    max_panel_pixels: display size limit per panel side (pixels of the image).
    vertex: optional float ``[P, 2]`` (row, column) of the true neutrino vertex per plane in
      pixels (pixel i covers [i, i + 1)); drawn as a ring where finite.

  Returns:
    The absolute path of the PNG, written atomically.
  """
  image = np.asarray(image, np.float32)
  label = np.asarray(label)
  pred = None if prediction is None else np.asarray(prediction)
  if image.ndim != 3 or label.shape != image.shape or (pred is not None
                                                       and pred.shape != image.shape):
    raise ValueError(f"image {image.shape}, label {label.shape} and prediction "
                     f"{None if pred is None else pred.shape} must all be [P, H, W]")
  num_planes, height, width = image.shape
  rows = [("charge", None), ("truth", label)] + ([("prediction", pred)] if pred is not None
                                                 else [])
  charge = np.abs(image)  # Induction planes are bipolar: show the magnitude.
  fig = Figure(figsize=(4.6 * num_planes, 3.0 * len(rows) + 0.8))
  axes = fig.subplots(len(rows), num_planes, squeeze=False)
  margin = max(4, round(0.03 * max(height, width)))
  for p in range(num_planes):
    box = (_zoom_box(label[p], None if pred is None else pred[p], margin, 2 * margin)
           if zoom else (slice(0, height), slice(0, width)))
    crop_h = box[0].stop - box[0].start
    crop_w = box[1].stop - box[1].start
    f = max(1, math.ceil(max(crop_h, crop_w) / max_panel_pixels))
    img = _max_pool(charge[p][box], f)
    active = charge[p][charge[p] > 0]
    vmax = float(np.percentile(active, 99)) if active.size else 1.0  # Per plane.
    extent = (box[1].start - 0.5, box[1].start + f * img.shape[1] - 0.5,
              box[0].start + f * img.shape[0] - 0.5, box[0].start - 0.5)
    for r, (name, classes) in enumerate(rows):
      ax = axes[r, p]
      if classes is None:
        ax.imshow(img, cmap="Greys", vmin=0.0, vmax=vmax, extent=extent,
                       interpolation="nearest", aspect="auto")
      else:
        ax.imshow(img, cmap="Greys", vmin=0.0, vmax=vmax * 3, extent=extent,
                  interpolation="nearest", aspect="auto")
        ax.imshow(_overlay(_max_pool(classes[p][box].astype(np.int32), f)), extent=extent,
                  interpolation="nearest", aspect="auto")
      if vertex is not None and np.isfinite(np.asarray(vertex, np.float64)[p]).all():
        vr, vc = (float(v) - 0.5 for v in np.asarray(vertex, np.float64)[p])
        ax.plot([vc], [vr], marker="o", ms=9, mfc="none", mec=(0.1, 0.75, 0.1), mew=1.2)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
      if r == 0:
        ax.set_title(PLANE_NAMES[p] if p < len(PLANE_NAMES) else f"plane {p}", fontsize=10)
      if p == 0:
        ax.set_ylabel(f"{name}\ndrift row", fontsize=9)
      if r == len(rows) - 1:
        ax.set_xlabel("wire", fontsize=9)
      ax.tick_params(labelsize=7)
      if classes is not None and name == "prediction":
        stats = event_statistics(pred[None, p:p + 1], label[None, p:p + 1])
        iou = per_event_iou(stats)[0, 0]
        ax.text(0.01, 0.99, f"cosmic IoU {iou[0]:.2f}, ν IoU {iou[1]:.2f}",
                transform=ax.transAxes, va="top", fontsize=8,
                bbox=dict(facecolor="white", alpha=0.7, lw=0))
  fig.legend(handles=[Patch(color=_COLOURS[1], label="cosmic"),
                      Patch(color=_COLOURS[2], label="neutrino")],
             loc="upper right", fontsize=9)
  fig.suptitle(f"{title} ({data_label})" if title else f"({data_label})", fontsize=11)
  fig.tight_layout(rect=(0, 0, 0.97, 0.97))
  return io.save_figure_atomic(fig, path, dpi=110)
