"""SBND cosmic tagging (arXiv 2012.01301): dataset, multi-plane UResNet, loss, metrics, analysis.

Data: simulated events (``recoil_jax.studies.sbnd.sim``) or CosmicTagger larcv3 files
(``config.data.files``, a comma-separated glob per split), both through the same TFDS
array_record dataset (``dataset.py``) and fixed-shape sources (``source.py``):
``image`` float32 [3, H, W], ``label`` int32 [3, H, W] and the per-event truth and origin
of ``source.EVENT_FIELDS`` (interaction, energy, PDG, CC/NC, mode, vertex, file index,
entry, event id; from ``particle_sbndneutrino`` / ``cluster2d_sbndneutrino`` for files).

Model: :class:`SbndSegmenter` wraps ``studies.sbnd.model.UResNet`` (fields from
``config.model``) so that ``apply(variables, batch, train)`` returns a dict: ``logits``
float32 [B, 3, H, W, 3], plus (evaluation mode, labelled batch) the per-event
``event_statistics`` of the argmax prediction. The analysis predicts only the statistics
(``Trained.predict(..., outputs=STAT_KEYS)`` selects them on the device), so it moves a few
hundred bytes per event instead of the logits (23.6 MB per event at 640×1024: the paper's
7,449 test events would need 176 GB on the host).

Loss and metrics (``loss_terms``): ``segmentation_losses.segmentation_loss`` from
``config.loss`` and every ``sbnd.analysis.METRIC_NAMES`` as exact (sum, count).

Analysis (``analyse``) on ``config.analysis.split`` with the best weights: the metrics
table beside the paper's baseline, the paper's event selection (Table 3) and IoU vs
neutrino energy (Figure 9) when the interaction types are known (simulation, or files
with ``particle_sbndneutrino``), event displays (``Trained.apply`` on those few events;
titles name file, entry and event id, rings mark the true vertex),
per-event predictions with the truth and (files[file_index], entry, event_id) in
``predictions_<split>.npz``. Everything is labelled
"simulated" unless the data came from files.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax import io
from recoil_jax import parallel
from recoil_jax.losses import segmentation as segmentation_losses
from recoil_jax.studies.sbnd import analysis as sbnd_analysis
from recoil_jax.studies.sbnd import source as sbnd_source
from recoil_jax.studies.sbnd import dataset as sbnd_dataset
from recoil_jax.studies.sbnd import model as uresnet
from recoil_jax import tasks

SPLITS = ("train", "validation", "test")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PREDICTIONS_FILE = "predictions_{split}.npz"
FILES_LABEL = "CosmicTagger files"


class SbndSegmenter(nn.Module):
  """UResNet on ``batch["image"]`` returning the task's output dict (module docstring).

  Outputs: ``logits`` float32 [B, 3, H, W, 3] always; in evaluation mode with
  ``batch["label"]`` also the per-event ``sbnd_analysis.event_statistics`` of the argmax
  prediction (a few numbers per event and plane). The loss is the task's
  (``loss_terms``), computed from the logits; ``Trained.predict(split, outputs=...)``
  selects outputs on the device, so predicting statistics never moves logits to the host.

  Attributes:
    net: the ``UResNet`` (its parameters live under ``"net"``).
  """
  net: nn.Module

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    logits = self.net(batch["image"], train=train).astype(jnp.float32)
    out = {"logits": logits}
    if not train and "label" in batch:
      out.update(sbnd_analysis.event_statistics(jnp.argmax(logits, axis=-1), batch["label"],
                                                xp=jnp))
    return out


def _file_lists(files: Mapping[str, str], *, evaluate_only: bool = False
                ) -> dict[str, list[str]] | None:
  """``{split: [paths]}`` from ``config.data.files`` (comma-separated globs), or None.

  Training needs every split; an evaluation-only run (``config.mode = "evaluate"``) any of
  them (e.g. ``files.test`` alone).
  """
  given = {s: str(files[s]).strip() for s in SPLITS if str(files[s]).strip()}
  if not given:
    return None
  missing = [s for s in SPLITS if s not in given]
  if missing and not evaluate_only:
    raise ValueError(f"config.data.files: {', '.join(f'files.{s}' for s in missing)} empty; "
                     "give a glob for every split (train, validation, test) or none (an "
                     "evaluation-only run, config.mode='evaluate', needs only the splits it "
                     "evaluates)")
  out = {}
  for split, spec in given.items():
    paths = []
    for pattern in (p.strip() for p in spec.split(",") if p.strip()):
      matched = sorted(glob.glob(os.path.expanduser(pattern)))
      if not matched:
        raise FileNotFoundError(f"config.data.files.{split}: no file matches {pattern!r}")
      paths.extend(matched)
    out[split] = paths
  return out


class SbndCosmicTask(tasks.Task):
  """The SBND cosmic-tagging study as a trainer task (see the module docstring)."""

  def __init__(self, config):
    super().__init__(config)
    self._builder = None
    self._evaluate_only = config.mode == "evaluate"
    self._files = _file_lists(config.data.files, evaluate_only=self._evaluate_only)
    self.data_label = FILES_LABEL if self._files else io.SIMULATED

  # -- data -------------------------------------------------------------------------
  def _dataset(self):
    if self._builder is None:
      d = self.config.data
      kwargs = {}
      if self._files:
        kwargs = dict(files=self._files, downsample=int(d.downsample),
                      threshold=float(d.threshold) if d.threshold > 0 else None)
      else:
        kwargs = dict(physics_kwargs={"signal": str(d.signal)})
      self._builder = sbnd_dataset.build_sbnd_dataset(
          os.path.abspath(os.path.expanduser(d.data_dir)),
          num_train=d.num_train, num_validation=d.num_validation, num_test=d.num_test,
          height=d.height, width=d.width, seed=d.seed, chunk_size=d.chunk_size,
          interaction_fractions=tuple(d.interaction_fractions), **kwargs)
    return self._builder

  def source(self, split: str) -> sbnd_source.SbndSource:
    """The fixed-shape source of one split (``train``, ``validation`` or ``test``)."""
    d = self.config.data
    source = sbnd_source.sbnd_sources(self._dataset(), [split],
                                      min_abs_value=d.min_pixel_value)[split]
    if (source.height, source.width) != (d.height, d.width):
      raise ValueError(f"dataset {self._dataset().data_path} holds {source.height}x"
                       f"{source.width} images, config.data.height x width is "
                       f"{d.height}x{d.width}")
    return source

  def train_source(self):
    return self.source("train")

  def eval_sources(self):
    if self._evaluate_only and self._files:  # Exactly the files the run names.
      return {split: self.source(split) for split in SPLITS if split in self._files}
    return {split: self.source(split) for split in ("validation", "test")}

  # -- model and loss ---------------------------------------------------------------
  def validate(self) -> None:
    """Model dtype and loss choices, before any data is built (file globs: ``__init__``)."""
    m, loss = self.config.model, self.config.loss
    if m.dtype not in DTYPES:
      raise ValueError(f"config.model.dtype={m.dtype!r}; known: {sorted(DTYPES)}")
    if loss.balance not in segmentation_losses.BALANCES:
      raise ValueError(f"config.loss.balance={loss.balance!r}; known: "
                       f"{segmentation_losses.BALANCES}")
    if loss.normalisation not in segmentation_losses.NORMALISATIONS:
      raise ValueError(f"config.loss.normalisation={loss.normalisation!r}; known: "
                       f"{segmentation_losses.NORMALISATIONS}")
    if len(loss.class_weights) != 3:
      raise ValueError(f"config.loss.class_weights={tuple(loss.class_weights)} needs 3 "
                       "weights (background, cosmic, neutrino)")
    if self.config.analysis.split not in SPLITS:
      raise ValueError(f"config.analysis.split={self.config.analysis.split!r}; known: "
                       f"{SPLITS}")
    if self._evaluate_only and self._files and self.config.analysis.split not in self._files:
      raise ValueError(f"config.analysis.split={self.config.analysis.split!r} has no file in "
                       f"this evaluation (config.data.files gives {sorted(self._files)}); set "
                       "--config.analysis.split to one of them")

  def build_model(self) -> SbndSegmenter:
    self.validate()
    m = self.config.model
    net = uresnet.UResNet(
        num_classes=3, initial_filters=m.initial_filters, depth=m.depth,
        first_kernel=m.first_kernel, blocks_per_level=m.blocks_per_level,
        deepest_filters=m.deepest_filters, deepest_blocks=m.deepest_blocks,
        deepest_kernel=m.deepest_kernel, connections=m.connections,
        upsampling=m.upsampling, residual=m.residual, cross_plane=m.cross_plane,
        leaky_slope=m.leaky_slope, bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
        dtype=DTYPES[m.dtype],
        bn_axis_name=parallel.DATA_AXIS if m.cross_replica_bn else None)
    return SbndSegmenter(net=net)

  def loss_terms(self, outputs: Mapping[str, jax.Array], batch) -> tasks.LossTerms:
    mask = batch["mask"].astype(jnp.float32)
    labels = batch["label"]
    logits = outputs["logits"]
    c = self.config.loss
    per_event = segmentation_losses.segmentation_loss(
        logits, labels, balance=c.balance, normalisation=c.normalisation,
        class_weights=tuple(c.class_weights), focal_gamma=c.focal_gamma)
    stats = (outputs if "nu_pred_pixels" in outputs else
             sbnd_analysis.event_statistics(jnp.argmax(logits, axis=-1), labels, xp=jnp))
    terms = {"loss": segmentation_losses.loss_terms(per_event, mask)}
    terms.update(sbnd_analysis.metric_terms(stats, mask, xp=jnp))
    return terms

  # -- analysis ---------------------------------------------------------------------
  def selection_thresholds(self) -> dict[str, Any]:
    """The selection cuts at this run's resolution (see ``config.analysis``)."""
    a, d = self.config.analysis, self.config.data
    min_pixels, max_row_diff = a.selection_min_pixels, a.selection_max_row_diff
    if a.selection_scale_with_resolution:
      min_pixels, max_row_diff = sbnd_analysis.scaled_selection_thresholds(
          d.height, d.width, min_pixels=min_pixels, max_row_diff=max_row_diff)
    return {"min_pixels": float(min_pixels), "max_row_diff": float(max_row_diff),
            "height": int(d.height), "width": int(d.width),
            "scaled_from": [a.selection_min_pixels, a.selection_max_row_diff]
                           if a.selection_scale_with_resolution else None}

  def analyse(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    a = self.config.analysis
    label = self.data_label
    split = a.split
    preds = trained.predict(split, outputs=sbnd_analysis.STAT_KEYS,
                            fields=tuple(sbnd_source.EVENT_FIELDS))
    out = preds["outputs"]
    stats = {k: np.asarray(out[k]) for k in sbnd_analysis.STAT_KEYS}
    truth = {k: np.asarray(preds[k]) for k in sbnd_source.EVENT_FIELDS}
    interaction = truth["interaction"].astype(np.int64)
    energy = truth["neutrino_energy_gev"].astype(np.float64)
    files = self._split_files(split)
    thresholds = self.selection_thresholds()
    selected = sbnd_analysis.select_events(stats["nu_pred_pixels"], stats["nu_pred_mean_row"],
                                          min_pixels=thresholds["min_pixels"],
                                          max_row_diff=thresholds["max_row_diff"])
    # Per event: truth, where it came from (files[file_index], entry, event_id), the
    # selection and the statistics of the prediction.
    io.write_npz_atomic(os.path.join(workdir, PREDICTIONS_FILE.format(split=split)),
                        **truth, files=np.asarray(files, dtype=str), selected=selected,
                        **stats)

    metrics = sbnd_analysis.exact_metrics(stats)
    results: dict[str, Any] = {"data": label, "split": split, "num_events": len(interaction),
                               "metrics": metrics, "selection_thresholds": thresholds,
                               "selected_fraction": float(selected.mean())}
    io.write_text_atomic(
        os.path.join(workdir, "sbnd_metrics.md"),
        sbnd_analysis.metrics_markdown({split: metrics}, label=label))

    known = interaction >= 0
    if known.any():
      table3 = sbnd_analysis.selection_table(selected, interaction)
      results["selection"] = table3
      io.write_json_atomic(os.path.join(workdir, "selection.json"),
                                     {"data": label, "thresholds": thresholds, **table3})
      io.write_text_atomic(
          os.path.join(workdir, "selection.md"),
          sbnd_analysis.selection_markdown(table3, thresholds, label=label))
      curves = sbnd_analysis.iou_vs_energy(stats, interaction, energy, a.energy_bins_gev)
      results["figure9"] = curves
      sbnd_analysis.plot_figure9(os.path.join(workdir, "figure9.png"), curves, label=label)
      io.write_json_atomic(os.path.join(workdir, "figure9.json"),
                                     {"data": label, **curves})
      io.write_text_atomic(os.path.join(workdir, "figure9.md"),
                                     sbnd_analysis.figure9_markdown(curves, label=label))
    else:
      results["selection_note"] = ("interaction types unknown (files without truth): no "
                                   "Table 3 or Figure 9; selected_fraction is over all events")
    results["event_displays"] = self._event_displays(trained, workdir, split, truth, files,
                                                     selected, stats)
    io.write_json_atomic(os.path.join(workdir, "sbnd_analysis.json"), results)
    logging.info("SBND analysis (%s) written to %s", label, workdir)
    return io.json_safe(results)

  def _display_indices(self, interaction: np.ndarray) -> list[int]:
    """First event of each type (ν types first), then the next events, up to the limit."""
    limit = int(self.config.analysis.num_event_displays)
    order = [sbnd_analysis.INTERACTIONS.index(t) for t in sbnd_analysis.NEUTRINO_TYPES] + [0]
    chosen = []
    for code in order:
      hits = np.flatnonzero(interaction == code)
      if hits.size:
        chosen.append(int(hits[0]))
    chosen += [i for i in range(len(interaction)) if i not in chosen]
    return sorted(chosen[:limit])

  def _split_files(self, split: str) -> list[str]:
    """The files of a split in ``file_index`` order ([] for simulated data)."""
    meta = (self._dataset().info.metadata or {}).get("files") or {}
    return [str(p) for p in meta.get(split, [])]

  def _event_displays(self, trained: tasks.Trained, workdir, split, truth, files,
                      selected, stats) -> list[str]:
    """Event-display PNGs (full and zoomed on the neutrino) of a few events."""
    interaction, energy = truth["interaction"], truth["neutrino_energy_gev"]
    indices = self._display_indices(interaction)
    if not indices:
      return []
    source = self.source(split)
    images = np.stack([source[i]["image"] for i in indices])
    labels = np.stack([source[i]["label"] for i in indices])
    logits = trained.apply({"image": images})["logits"]
    pred = np.argmax(logits, axis=-1).astype(np.uint8)
    io.write_npz_atomic(os.path.join(workdir, f"event_displays_{split}.npz"),
                        indices=np.asarray(indices), images=images,
                        labels=labels.astype(np.uint8), predictions=pred,
                        **{k: v[indices] for k, v in truth.items()})
    paths = []
    for k, i in enumerate(indices):
      code = int(interaction[i])
      kind = (sbnd_analysis.INTERACTION_LABELS[sbnd_analysis.INTERACTIONS[code]]
              if code >= 0 else "unknown interaction")
      e = f", E_ν = {energy[i]:.2f} GeV" if code > 0 and np.isfinite(energy[i]) else ""
      run, subrun, event = (int(v) for v in truth["event_id"][i])
      f = int(truth["file_index"][i])
      origin = (f"{os.path.basename(files[f])} entry {int(truth['entry'][i])}, "
                if 0 <= f < len(files) else "")
      title = (f"{split} event {i} ({origin}run {run} subrun {subrun} event {event}): "
               f"{kind}{e}; selected as ν: {bool(selected[i])} (ν-tagged pixels per plane "
               f"{stats['nu_pred_pixels'][i].astype(int).tolist()})")
      for zoom in (False, True):
        name = f"event_display_{i}{'_zoom' if zoom else ''}.png"
        paths.append(sbnd_analysis.plot_event_display(
            os.path.join(workdir, name), images[k], labels[k], pred[k], title=title,
            data_label=self.data_label, zoom=zoom, vertex=truth["vertex_pixel"][i]))
    return [os.path.basename(p) for p in paths]
