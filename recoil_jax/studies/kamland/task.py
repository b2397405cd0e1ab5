"""KamLAND-Zen 0νββ vs ¹⁰C and ββ direction (the source study: a poster on spherical CNNs for
KamLAND-Zen; KamNet, arXiv 2203.01870; spherical CNNs, arXiv 1801.10130).

One task, two objectives chosen by ``config.task_mode`` (the data, the spherical trunk,
the images and the launcher are shared; only the label, the read-out and the analysis
differ, so one module keeps them from drifting apart):

* ``"classification"``: Nhit-matched toy events (``studies.kamland.sim``) or hit-list
  files, stored as a TFDS dataset of hit lists (``dataset``), turned into images per
  example (``source``). Model: ``config.model.name`` = "spherical" (S² → SO(3) → SO(3) →
  Haar mean → dense), "planar" (CNN on KamNet's 38 × 38 map) or "graph" (jraph network on
  the k-nearest-PMT graph). Loss: binary cross entropy (signal = 0νββ) as exact (sum,
  count) terms. Analysis: test scores, ¹⁰C rejection at 90 % 0νββ acceptance (KamNet's
  metric) with Clopper–Pearson and bootstrap intervals, AUC, rejection curve and score
  histograms. With ``analysis.mask_direction_events`` > 0 (spherical model) the trained
  classifier also runs the source study's regional-mask direction method (``masks``) on
  that many fresh Cherenkov-only ββ events (``mask_direction.json``).
* ``"direction"``: Cherenkov-only 0νββ events (``simulator="toy_direction"``, their true
  direction the unit sum of the two electron momenta); the spherical trunk with the
  source study's pooling + dense read-out and a direction head of
  ``recoil_jax.nn.direction_heads`` (``config.model.head``, "vmf" by default); loss = the
  head's negative log-likelihood. Analysis: angular errors, the fractions within 30° and
  60° (the source study: 50 % within 60°) beside a non-ML baseline (the mean direction
  from the vertex to the hit PMTs), vMF cone coverage (κ calibration) and its plot.
  ``data.electron_tracks`` (variant ``tracks``) simulates the ββ electrons as multiply
  scattered tracks with Cherenkov light along the scattered path (``sim.electron_tracks``),
  the harder, more realistic toy.

Everything is labelled simulated unless the data came from files.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
from absl import logging

import jax.numpy as jnp

from recoil_jax import io
from recoil_jax import tasks
from recoil_jax.analysis import classification as cls_analysis
from recoil_jax.analysis import direction as direction_analysis
from recoil_jax.losses import classification as cls_losses
from recoil_jax.losses import direction as direction_losses
from recoil_jax.nn import direction_heads
from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import layers as sphere_layers
from recoil_jax.studies.kamland import dataset as kamland_dataset
from recoil_jax.studies.kamland import hits as kamland_hits
from recoil_jax.studies.kamland import masks as kamland_masks
from recoil_jax.studies.kamland import model as kamland_model
from recoil_jax.studies.kamland import sim
from recoil_jax.studies.kamland import source as kamland_source


TASK_MODES = ("classification", "direction")


class KamlandTask(tasks.Task):
  """0νββ vs ¹⁰C classification or ββ direction (see the module docstring)."""

  def __init__(self, config):
    super().__init__(config)
    self._builder = None
    self._pmts = None

  @property
  def direction_mode(self) -> bool:
    return self.config.task_mode == "direction"

  def validate(self) -> None:
    m, d = self.config.model, self.config.data
    if self.config.task_mode not in TASK_MODES:
      raise ValueError(f"config.task_mode={self.config.task_mode!r}; known: {TASK_MODES}")
    if m.name not in kamland_model.MODELS:
      raise ValueError(f"config.model.name={m.name!r}; known: {kamland_model.MODELS}")
    if self.direction_mode:
      direction_heads.head_spec(m.head)
      if m.name != "spherical":
        raise ValueError(f"config.model.name={m.name!r}: task_mode='direction' has the "
                         "spherical model only")
      if any(d.hit_files.values()):
        raise ValueError("config.data.hit_files: task_mode='direction' needs the true "
                         "direction, which hit-list files do not carry; use simulation")
    unknown = set(d.channels) - set(("all", "early"))
    if unknown or not d.channels:
      raise ValueError(f"config.data.channels={tuple(d.channels)!r}; known: ('all', 'early')")
    files = {k: v for k, v in d.hit_files.items() if v}
    for split, pattern in files.items():
      if not glob.glob(os.path.expanduser(pattern)):
        raise FileNotFoundError(f"config.data.hit_files.{split}: no file matches {pattern!r}")
    if files and d.electron_tracks:
      raise ValueError("config.data.electron_tracks is a simulator option; it cannot apply "
                       "to hit_files")
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
          simulator="toy_direction" if self.direction_mode else "toy",
          sim_kwargs=self._sim_kwargs(files),
          hit_files=files or None)
    return self._builder

  def _sim_kwargs(self, files) -> dict[str, Any]:
    """Simulator options; only non-defaults, so that default datasets keep their names."""
    if files:
      return {"num_pmts": len(self._pmt_positions())}
    return {"electron_tracks": True} if self.config.data.electron_tracks else {}

  def _source(self, split):
    d = self.config.data
    return kamland_source.KamlandSource(
        self._dataset().as_data_source(split), self._pmt_positions(), L=d.band_limit,
        sampling=d.sampling, channels=tuple(d.channels), early_ns=d.early_ns,
        smoothing_deg=d.smoothing_deg, with_nodes=self.config.model.name == "graph",
        name=split)

  def train_source(self):
    return self._source("train")

  def eval_sources(self):
    return {s: self._source(s) for s in ("validation", "test")}

  def build_model(self):
    m = self.config.model
    trunk = dict(features=tuple(m.features), band_limits=tuple(m.band_limits), N=m.N,
                 sampling=self.config.data.sampling, hidden=tuple(m.hidden),
                 relu_oversample=m.relu_oversample)
    if self.direction_mode:
      return kamland_model.SphericalDirection(head=m.head, **trunk)
    if m.name == "spherical":
      return kamland_model.SphericalClassifier(**trunk)
    if m.name == "graph":
      return kamland_model.GraphClassifier(
          pmt_positions=np.asarray(self._pmt_positions(), np.float32), k=m.graph_k,
          features=tuple(m.graph_features), hidden=tuple(m.hidden))
    return kamland_model.PlanarClassifier(features=tuple(m.planar_features),
                                          hidden=tuple(m.hidden))

  def loss_terms(self, outputs, batch) -> tasks.LossTerms:
    if not self.direction_mode:
      return cls_losses.binary_terms(outputs["logit"], batch["label"], batch["mask"])
    mask = batch["mask"].astype(jnp.float32)
    y = batch["direction"]
    count = mask.sum()
    nll = direction_heads.head_spec(self.config.model.head).nll(outputs, y)
    cos_loss = direction_losses.cosine_similarity_loss(outputs["pred_direction"], y)
    terms = {"loss": ((nll * mask).sum(), count),
             "cosine_loss": ((cos_loss * mask).sum(), count)}
    if "kappa" in outputs:
      terms["mean_kappa"] = ((outputs["kappa"] * mask).sum(), count)
    return terms

  def analyse(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    if self.direction_mode:
      return self._analyse_direction(trained, workdir)
    a = self.config.analysis
    label_kind = "hit-list files" if any(self.config.data.hit_files.values()) else io.SIMULATED
    pred = trained.predict("test", outputs=("logit",), fields=("label", "nhit"))
    score = np.asarray(pred["outputs"]["logit"], np.float64)
    label = np.asarray(pred["label"])
    sig, bkg = score[label == 1], score[label == 0]
    point = cls_analysis.bootstrap_working_point(
        sig, bkg, a.signal_efficiency, num_resamples=a.bootstrap_resamples, seed=0)
    result = {"data": label_kind, "model": self.config.model.name, "step": trained.step,
              "num_params": sphere_layers.param_count(trained.variables.get("params", {})),
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
    if a.mask_direction_events > 0 and self.config.model.name == "spherical":
      result["mask_direction"] = self._mask_direction(trained, workdir)
    io.write_json_atomic(os.path.join(workdir, "kamland_results.json"), result)
    lo, hi = point["bootstrap"]["rejection_interval"]
    io.write_text_atomic(os.path.join(workdir, "kamland_results.md"), (
        f"| model | data | ¹⁰C rejection at {a.signal_efficiency:.0%} 0νββ acceptance | "
        "68 % bootstrap interval | AUC | test events (0νββ / ¹⁰C) |\n|---|---|---|---|---|---|\n"
        f"| {self.config.model.name} | {label_kind} | {point['rejection']:.3f} | "
        f"[{lo:.3f}, {hi:.3f}] | {result['auc']:.3f} | {len(sig)} / {len(bkg)} |\n"))
    logging.info("KamLAND analysis: rejection %.3f, AUC %.3f", point["rejection"], result["auc"])
    return result

  def _mask_direction(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    """The regional-mask method of the trained classifier on Cherenkov-only ββ events."""
    a, d = self.config.analysis, self.config.data
    ev = sim.simulate(np.random.SeedSequence(d.seed, spawn_key=(7,)),
                      a.mask_direction_events, "0vbb", cherenkov_only=True,
                      **self._sim_kwargs({}))
    rows = [dict(ev.event(i), vertex=ev.vertex[i], label=ev.label[i],
                 visible_energy=ev.visible_energy[i], direction=ev.direction[i])
            for i in range(len(ev))]
    src = kamland_source.KamlandSource(
        rows, self._pmt_positions(), L=d.band_limit, sampling=d.sampling,
        channels=tuple(d.channels), early_ns=d.early_ns, smoothing_deg=d.smoothing_deg,
        name="mask-direction events")
    images = np.stack([src[i]["sphere"] for i in range(len(src))])
    grid = grids.s2fft_grid(d.band_limit, d.sampling)
    score = lambda x: trained.apply({"sphere": x})["logit"]  # noqa: E731
    out = kamland_masks.regional_mask_directions(
        score, images, grid, num_masks=a.mask_num_masks, cap_deg=a.mask_cap_deg,
        batch=self.config.train.eval_batch_size)
    pmts = self._pmt_positions()
    centroid = []
    for i in range(len(ev)):
      h = pmts[rows[i]["pmt"]] - ev.vertex[i].astype(np.float64)
      centroid.append(np.sum(h / np.linalg.norm(h, axis=1, keepdims=True), 0) + 1e-12)
    res = {"data": io.SIMULATED, "num_events": len(ev), "num_masks": a.mask_num_masks,
           "cap_deg": a.mask_cap_deg}
    for name, est in (("regional masks (top 25 %)", out["direction"]),
                      ("regional masks (best mask)", out["best"]),
                      ("hit centroid (non-ML)", np.asarray(centroid))):
      err = direction_analysis.angular_errors_deg(est, ev.direction)
      res[name] = {"fraction_within_30deg": float(np.mean(err <= 30)),
                   "fraction_within_60deg": float(np.mean(err <= 60)),
                   "median_deg": float(np.median(err))}
    io.write_json_atomic(os.path.join(workdir, "mask_direction.json"), res)
    return res

  def _centroid_baseline(self, split: str) -> np.ndarray:
    """Non-ML direction [N, 3]: the mean unit vector from the vertex to the hit PMTs."""
    pmts = self._pmt_positions()
    out = []
    for ex in self._dataset().as_data_source(split):
      d = pmts[np.asarray(ex["pmt"], np.int64)] - np.asarray(ex["vertex"], np.float64)
      v = np.sum(d / np.linalg.norm(d, axis=1, keepdims=True), axis=0)
      out.append(v if np.linalg.norm(v) > 0 else np.array([0.0, 0.0, 1.0]))
    return np.asarray(out, np.float64)

  def _analyse_direction(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    a, head = self.config.analysis, self.config.model.head
    hetero = direction_heads.head_spec(head).heteroscedastic
    label = io.SIMULATED
    want = ("pred_direction", "kappa") if hetero else ("pred_direction",)
    pred = trained.predict("test", outputs=want, fields=("direction", "nhit"))
    mu = np.asarray(pred["outputs"]["pred_direction"], np.float64)
    y = np.asarray(pred["direction"], np.float64)
    errors = {f"spherical CNN + {head}": direction_analysis.angular_errors_deg(mu, y),
              "hit centroid (non-ML)": direction_analysis.angular_errors_deg(
                  self._centroid_baseline("test"), y)}
    n = len(y)

    def summary(err):
      return {"fraction_within_30deg": float(np.mean(err <= 30)),
              "fraction_within_60deg": float(np.mean(err <= 60)),
              "median_deg": float(np.median(err)),
              "binomial_error_60deg": float(direction_analysis.binomial_error(
                  np.mean(err <= 60), n))}

    result = {"data": label, "task_mode": "direction", "head": head, "step": trained.step,
              "electron_tracks": bool(self.config.data.electron_tracks),
              "num_params": sphere_layers.param_count(trained.variables.get("params", {})),
              "num_test": int(n), "mean_nhit": float(np.mean(pred["nhit"])),
              "methods": {k: summary(v) for k, v in errors.items()},
              "isotropic_fraction_within_30_60deg": [float((1 - np.cos(np.radians(t))) / 2)
                                                      for t in (30, 60)]}
    save = {"pred_direction": mu, "direction": y}
    if hetero:
      kappa = np.asarray(pred["outputs"]["kappa"], np.float64)
      nominal = tuple(a.coverages)
      observed = direction_analysis.cone_coverage(mu, kappa, y, nominal)
      result["calibration"] = {"nominal": list(nominal), "observed": observed.tolist()}
      result["median_kappa"] = float(np.median(kappa))
      direction_analysis.plot_calibration(
          os.path.join(workdir, "calibration.png"),
          {"Cherenkov-only ββ": {"nominal": nominal, "observed": observed, "num_events": n}},
          label=label)
      save["kappa"] = kappa
    io.write_npz_atomic(os.path.join(workdir, "test_directions.npz"), **save)
    direction_analysis.plot_angular_error_histograms(
        os.path.join(workdir, "angular_errors.png"), errors, label=label)
    io.write_json_atomic(os.path.join(workdir, "kamland_direction.json"), result)
    rows = "".join(
        f"| {k} | {v['fraction_within_30deg']:.3f} | {v['fraction_within_60deg']:.3f} "
        f"± {v['binomial_error_60deg']:.3f} | {v['median_deg']:.1f} |\n"
        for k, v in result["methods"].items())
    cal = ""
    if hetero:
      cal = ("\nvMF cone coverage (nominal → observed): " + ", ".join(
          f"{p:.2f} → {o:.3f}" for p, o in zip(result["calibration"]["nominal"],
                                               result["calibration"]["observed"])) + "\n")
    io.write_text_atomic(os.path.join(workdir, "kamland_direction.md"), (
        f"Cherenkov-only 0νββ direction ({label}; {n} test events)\n\n"
        "| method | within 30° | within 60° | median error (°) |\n|---|---|---|---|\n"
        + rows + cal))
    m = result["methods"][f"spherical CNN + {head}"]
    logging.info("KamLAND direction: %.3f within 30°, %.3f within 60°, median %.1f°",
                 m["fraction_within_30deg"], m["fraction_within_60deg"], m["median_deg"])
    return result
