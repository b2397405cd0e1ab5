"""KamLAND-Zen 0νββ vs ¹⁰C (the source study: a poster on spherical CNNs for KamLAND-Zen;
KamNet, arXiv 2203.01870; spherical CNNs, arXiv 1801.10130).

Data: Nhit-matched toy events (``studies.kamland.sim``) or hit-list files, stored as a
TFDS dataset of hit lists (``dataset``), turned into images per example (``source``).
Model: ``config.model.name`` = "spherical" (S² → SO(3) → SO(3) → Haar mean → dense) or
"planar" (CNN on KamNet's 38 × 38 map). Loss: binary cross entropy (signal = 0νββ) as exact
(sum, count) terms. Analysis (``analyse``): test scores, ¹⁰C rejection at 90 % 0νββ
acceptance (KamNet's metric) with Clopper–Pearson and bootstrap intervals, AUC, rejection
curve and score histograms — all labelled simulated unless the data came from files.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
from absl import logging

from recoil_jax import io
from recoil_jax import tasks
from recoil_jax.analysis import classification as cls_analysis
from recoil_jax.losses import classification as cls_losses
from recoil_jax.studies.kamland import dataset as kamland_dataset
from recoil_jax.studies.kamland import hits as kamland_hits
from recoil_jax.studies.kamland import model as kamland_model
from recoil_jax.studies.kamland import sim
from recoil_jax.studies.kamland import source as kamland_source


class KamlandTask(tasks.Task):
  """0νββ vs ¹⁰C classification (see the module docstring)."""

  def __init__(self, config):
    super().__init__(config)
    self._builder = None
    self._pmts = None

  def validate(self) -> None:
    m, d = self.config.model, self.config.data
    if m.name not in kamland_model.MODELS:
      raise ValueError(f"config.model.name={m.name!r}; known: {kamland_model.MODELS}")
    unknown = set(d.channels) - set(("all", "early"))
    if unknown or not d.channels:
      raise ValueError(f"config.data.channels={tuple(d.channels)!r}; known: ('all', 'early')")
    files = {k: v for k, v in d.hit_files.items() if v}
    for split, pattern in files.items():
      if not glob.glob(os.path.expanduser(pattern)):
        raise FileNotFoundError(f"config.data.hit_files.{split}: no file matches {pattern!r}")
    if files and not d.pmt_table:
      raise ValueError("config.data.pmt_table must name the PMT table when hit_files are given")
    if d.pmt_table and not os.path.exists(os.path.expanduser(d.pmt_table)):
      raise FileNotFoundError(f"config.data.pmt_table: {d.pmt_table!r} not found")
    if m.band_limits[0] > d.band_limit:
      raise ValueError(f"config.model.band_limits[0]={m.band_limits[0]} exceeds "
                       f"config.data.band_limit={d.band_limit}")

  def _pmt_positions(self):
    if self._pmts is None:
      path = self.config.data.pmt_table
      self._pmts = (kamland_hits.read_pmt_table(os.path.expanduser(path))[0] if path
                    else sim.pmt_table()[0])
    return self._pmts

  def _dataset(self):
    if self._builder is None:
      d = self.config.data
      files = {k: v for k, v in d.hit_files.items() if v}
      self._builder = kamland_dataset.build_kamland_dataset(
          os.path.abspath(os.path.expanduser(d.data_dir)),
          num_per_class={"train": d.num_train_per_class,
                         "validation": d.num_validation_per_class,
                         "test": d.num_test_per_class},
          seed=d.seed, chunk_per_class=d.chunk_per_class,
          sim_kwargs=({"num_pmts": len(self._pmt_positions())} if files else {}),
          hit_files=files or None)
    return self._builder

  def _source(self, split):
    d = self.config.data
    return kamland_source.KamlandSource(
        self._dataset().as_data_source(split), self._pmt_positions(), L=d.band_limit,
        sampling=d.sampling, channels=tuple(d.channels), early_ns=d.early_ns,
        smoothing_deg=d.smoothing_deg, name=split)

  def train_source(self):
    return self._source("train")

  def eval_sources(self):
    return {s: self._source(s) for s in ("validation", "test")}

  def build_model(self):
    m = self.config.model
    if m.name == "spherical":
      return kamland_model.SphericalClassifier(
          features=tuple(m.features), band_limits=tuple(m.band_limits), N=m.N,
          sampling=self.config.data.sampling, hidden=tuple(m.hidden))
    return kamland_model.PlanarClassifier(features=tuple(m.planar_features),
                                          hidden=tuple(m.hidden))

  def loss_terms(self, outputs, batch) -> tasks.LossTerms:
    return cls_losses.binary_terms(outputs["logit"], batch["label"], batch["mask"])

  def analyse(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    a = self.config.analysis
    label_kind = "hit-list files" if any(self.config.data.hit_files.values()) else io.SIMULATED
    pred = trained.predict("test", outputs=("logit",), fields=("label", "nhit"))
    score = np.asarray(pred["outputs"]["logit"], np.float64)
    label = np.asarray(pred["label"])
    sig, bkg = score[label == 1], score[label == 0]
    point = cls_analysis.bootstrap_working_point(
        sig, bkg, a.signal_efficiency, num_resamples=a.bootstrap_resamples, seed=0)
    result = {"data": label_kind, "model": self.config.model.name, "step": trained.step,
              "num_test_signal": int(len(sig)), "num_test_background": int(len(bkg)),
              "auc": cls_analysis.auc(sig, bkg), "working_point": point,
              "mean_nhit": {"0vbb": float(np.mean(pred["nhit"][label == 1])),
                            "c10": float(np.mean(pred["nhit"][label == 0]))}}
    io.write_npz_atomic(os.path.join(workdir, "test_scores.npz"), score=score, label=label)
    name = f"{self.config.model.name} ({label_kind})"
    cls_analysis.plot_rejection(os.path.join(workdir, "rejection.png"),
                                {name: {"signal": sig, "background": bkg}}, label=label_kind)
    cls_analysis.plot_score_histograms(os.path.join(workdir, "scores.png"),
                                       {"0νββ": sig, "¹⁰C": bkg}, label=label_kind)
    io.write_json_atomic(os.path.join(workdir, "kamland_results.json"), result)
    lo, hi = point["bootstrap"]["rejection_interval"]
    io.write_text_atomic(os.path.join(workdir, "kamland_results.md"), (
        f"| model | data | ¹⁰C rejection at {a.signal_efficiency:.0%} 0νββ acceptance | "
        "68 % bootstrap interval | AUC | test events (0νββ / ¹⁰C) |\n|---|---|---|---|---|---|\n"
        f"| {self.config.model.name} | {label_kind} | {point['rejection']:.3f} | "
        f"[{lo:.3f}, {hi:.3f}] | {result['auc']:.3f} | {len(sig)} / {len(bkg)} |\n"))
    logging.info("KamLAND analysis: rejection %.3f, AUC %.3f", point["rejection"], result["auc"])
    return result
