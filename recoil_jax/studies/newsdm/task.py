"""NEWSdm emulsion classification (arXiv 2106.11995): 3D CNN over (y, x, polarisation).

The source study is a PhD talk on deep learning for NEWSdm (directional dark matter in
nuclear emulsion; arXiv 2106.11995, 2005.13042): carbon-ion signal vs fog and γ
backgrounds from 8-polarisation microscope images, with background rejection ~10³
reached and 10⁴ needed.

Data (``config.data``): simulated events (``sim.py``) in the authors' format
(``readers.py``), cleaned with their cuts. Training and validation come from a TFDS
dataset (``dataset.py``) of the kinds ``data.train_kinds`` (the source study: C30, C60,
C100 and fog; the "unphysical" regime adds silver nanoparticles). The test sets are
*streaming* sources (``source.StreamingSource``): ``test_<kind>_beam<angle>`` for every
carbon energy and beam angle, ``test_<kind>`` for every background, generated event by
event (10⁵ background events never sit in memory), with events failing the cuts masked.

Model (``model.py``): NEWSnet_3D or a plain 3D CNN, with the source study's rotation
augmentation or the polarisation-cycling one (``config.model.augment``).

Loss (``loss_terms``): the authors' ``μ · CCE₄ + BCE(p_sig, y_sig)`` with p_sig = p_C30 +
p_C60 + p_C100, via ``losses/classification.py``, as exact (sum, count) terms over events
that pass the cleaning cuts.

Analysis (``analyse``): on every test set, the signal logit (score) and the classical
barycentre-shift score (``barycentre.py``) on the same events; per background kind, the
rejection power 1/ε_B vs signal efficiency with Clopper–Pearson intervals, working
points, AUC and score histograms (``analysis/classification.py``); tables
``newsdm_rejection.md``, plots ``rejection_<background>.png``, ``scores.png``, the
per-event scores ``scores_<split>.npz`` and ``newsdm_analysis.json``. With
``analysis.average_last_checkpoints = k > 0`` a third score, ``nn_mean``, is the logit of
the mean signal probability of the last k kept checkpoints (the authors' final model;
``ensemble.py``). Every number is labelled simulated.

Each test event is simulated and predicted once, by the analysis: the trainer's closing
evaluation covers ``validation`` only (``final_evaluation_splits``), and the analysis
reports per test set what that evaluation would have (``test_metrics``: the
``loss_terms`` loss, binary and 4-class accuracies over the events passing the cuts; also
under ``analysis`` in ``final_metrics.json``), with the wall time, events/s and resident
memory of its pass (``evaluation``; ``peak_rss_mib`` is the process's). The pass is
memory-bounded: ``Trained.predict`` reads the ``StreamingSource`` batch by batch (a few
chunks of images cached), and keeps per event only the 4 logits, the signal logit and
four scalar fields — 10⁵ events hold ≈ 5 MB, whatever the image size. (With
``average_last_checkpoints`` the checkpoint mean is a second pass that regenerates the
events.)
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax import io
from recoil_jax import tasks
from recoil_jax.analysis import classification as cls_analysis
from recoil_jax.losses import classification as cls_losses
from recoil_jax.studies.newsdm import dataset as newsdm_dataset
from recoil_jax.studies.newsdm import ensemble
from recoil_jax.studies.newsdm import model as newsdm_model
from recoil_jax.studies.newsdm import sim
from recoil_jax.studies.newsdm import source as newsdm_source

SCORES_FILE = "scores_{split}.npz"


def signal_split(kind: str, beam_angle_deg: float) -> str:
  return f"test_{kind}_beam{beam_angle_deg:g}"


def background_split(kind: str) -> str:
  return f"test_{kind}"


class NewsdmTask(tasks.Task):
  """The NEWSdm study as a trainer task (see the module docstring)."""

  #: The trainer's closing evaluation covers validation only: the streamed test sets (up to
  #: 10⁵ events each) are predicted once, by ``analyse``, which also reports their loss and
  #: accuracies (``test_metrics``) as the closing evaluation would have.
  final_evaluation_splits = ("validation",)

  def __init__(self, config):
    super().__init__(config)
    self._builder = None
    self._test_sources = None

  # -- checks -----------------------------------------------------------------------
  def validate(self) -> None:
    """Kinds, model and augmentation names, μ, before any data is built."""
    d, m, a = self.config.data, self.config.model, self.config.analysis
    sim.kind_codes(tuple(d.train_kinds), 1)
    if not any(k in sim.SIGNAL_KINDS for k in d.train_kinds) or not any(
        k in sim.BACKGROUND_KINDS for k in d.train_kinds):
      raise ValueError(f"config.data.train_kinds={tuple(d.train_kinds)}: need at least one "
                       f"signal kind {sim.SIGNAL_KINDS} and one background {sim.BACKGROUND_KINDS}")
    for key, kinds, allowed in (("test_signal_kinds", a.test_signal_kinds, sim.SIGNAL_KINDS),
                                ("test_background_kinds", a.test_background_kinds,
                                 sim.BACKGROUND_KINDS)):
      bad = [k for k in kinds if k not in allowed]
      if bad or not kinds:
        raise ValueError(f"config.analysis.{key}={tuple(kinds)}: choose from {allowed}")
    if m.architecture not in newsdm_model.ARCHITECTURES:
      raise ValueError(f"config.model.architecture={m.architecture!r}; known: "
                       f"{newsdm_model.ARCHITECTURES}")
    if m.augment not in newsdm_model.AUGMENTATIONS:
      raise ValueError(f"config.model.augment={m.augment!r}; known: "
                       f"{newsdm_model.AUGMENTATIONS}")
    if not 0 <= m.bn_momentum < 1:
      raise ValueError(f"config.model.bn_momentum={m.bn_momentum} must be in [0, 1)")
    if not self.config.loss.mu >= 0:
      raise ValueError(f"config.loss.mu={self.config.loss.mu} must be >= 0")
    k, keep = a.average_last_checkpoints, self.config.train.max_checkpoints_to_keep
    if k < 0 or (k > 0 and keep is not None and keep < k):
      raise ValueError(f"config.analysis.average_last_checkpoints={k}: must be >= 0 and at "
                       f"most config.train.max_checkpoints_to_keep={keep}")
    sim.make_params(dict(d.physics))

  # -- data -------------------------------------------------------------------------
  def _cuts(self) -> newsdm_dataset.CutSpec:
    c = self.config.data.cuts
    return newsdm_dataset.CutSpec(
        saturation=int(c.saturation), brightest_fraction=float(c.brightest_fraction),
        isolation_threshold=float(c.isolation_threshold),
        isolation_min_pixels=int(c.isolation_min_pixels),
        calibration_events=int(c.calibration_events))

  def _physics(self) -> dict[str, float]:
    return {k: float(v) for k, v in self.config.data.physics.items()}

  def _dataset(self):
    if self._builder is None:
      d = self.config.data
      self._builder = newsdm_dataset.build_newsdm_dataset(
          os.path.abspath(os.path.expanduser(d.data_dir)), num_train=d.num_train,
          num_validation=d.num_validation, seed=d.seed, kinds=tuple(d.train_kinds),
          beam_angles_deg=tuple(d.train_beam_angles_deg), chunk_size=d.chunk_size,
          physics_kwargs=self._physics(), cuts=self._cuts())
    return self._builder

  def _stored(self, split: str) -> newsdm_source.StoredSource:
    return newsdm_source.StoredSource(self._dataset().as_data_source(split), name=split)

  def test_sources(self) -> dict[str, newsdm_source.StreamingSource]:
    """The streaming test sets by split name (module docstring)."""
    if self._test_sources is None:
      d, a = self.config.data, self.config.analysis
      kinds = tuple(a.test_signal_kinds) + tuple(a.test_background_kinds)
      thresholds = newsdm_dataset.brightness_thresholds(
          kinds, seed=d.seed, params=self._physics(), cuts=self._cuts())
      common = dict(seed=d.seed + 1, chunk_size=a.test_chunk_size, params=self._physics(),
                    cuts=self._cuts())
      out, stream = {}, 0
      for kind in a.test_signal_kinds:
        for angle in a.test_beam_angles_deg:
          name = signal_split(kind, angle)
          out[name] = newsdm_source.StreamingSource(
              kind, a.num_test_signal, stream=stream, beam_angle_deg=float(angle),
              brightness_threshold=thresholds[kind], name=name, **common)
          stream += 1
      for kind in a.test_background_kinds:
        name = background_split(kind)
        out[name] = newsdm_source.StreamingSource(
            kind, a.num_test_background, stream=100 + sim.KIND_CODE[kind],
            brightness_threshold=thresholds[kind], name=name, **common)
      self._test_sources = out
    return self._test_sources

  def train_source(self):
    return self._stored("train")

  def eval_sources(self):
    return {"validation": self._stored("validation"), **self.test_sources()}

  # -- model and loss ---------------------------------------------------------------
  def build_model(self):
    m = self.config.model
    return newsdm_model.build(
        m.architecture, width=m.width, identity_blocks=m.identity_blocks, d_mid=m.d_mid,
        d_end=m.d_end, block_dropout=m.block_dropout, max_norm=m.max_norm, augment=m.augment,
        exact_only=m.exact_only, bn_momentum=m.bn_momentum)

  def loss_terms(self, outputs: Mapping[str, Any], batch) -> tasks.LossTerms:
    """``μ · CCE₄ + BCE(p_sig)`` per event over the events passing the cuts (exact sums)."""
    mask = batch["mask"].astype(jnp.float32) * batch["passed_cuts"].astype(jnp.float32)
    four = cls_losses.multiclass_terms(outputs["logits"], batch["label"], mask)
    binary = cls_losses.binary_terms(outputs["signal_logit"], batch["signal"], mask)
    # Per-class accuracies have no events in one-kind test sets (0/0 = nan in every log).
    binary = {k: v for k, v in binary.items() if k in ("loss", "accuracy")}
    mu = float(self.config.loss.mu)
    count = jnp.sum(mask)
    terms = cls_losses.merge_terms(four, binary, prefixes=("multiclass/", "binary/"))
    terms["loss"] = (mu * four["loss"][0] + binary["loss"][0], count)
    terms["accuracy"] = binary["accuracy"]
    return terms

  # -- analysis ---------------------------------------------------------------------
  def analyse(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    a = self.config.analysis
    label = io.SIMULATED
    sources = self.test_sources()
    scores: dict[str, dict[str, np.ndarray]] = {}
    cut_counts = {}
    k = int(a.average_last_checkpoints)
    members = []
    if k:  # The authors' final model: the mean of late checkpoints' predictions.
      target = ensemble.abstract_state(self.config, self, trained.model, jax.local_devices()[0])
      members = ensemble.late_variables(ensemble.checkpoint_directory(workdir), target, k)
      logging.info("NEWSdm: averaging the checkpoints of steps %s", [s for s, _ in members])
    test_metrics, evaluation = {}, {}
    for split, src in sources.items():
      pred, evaluation[split] = self._predict_streamed(trained, split, src)
      test_metrics[split] = self._split_metrics(pred)
      keep = pred["passed_cuts"] > 0.5
      scores[split] = {"nn": np.asarray(pred["outputs"]["signal_logit"], np.float64)[keep],
                       "bar_shift": np.asarray(pred["bar_shift_nm"], np.float64)[keep]}
      extra = {}
      if members:
        mean = ensemble.mean_signal_logit(ensemble.signal_logits(
            trained.model, [v for _, v in members], src,
            batch_size=int(self.config.train.eval_batch_size), name=split))
        scores[split]["nn_mean"] = mean[keep]
        extra["signal_logit_mean"] = mean
      cut_counts[split] = src.cut_counts()
      io.write_npz_atomic(os.path.join(workdir, SCORES_FILE.format(split=split)),
                          signal_logit=pred["outputs"]["signal_logit"],
                          bar_shift_nm=pred["bar_shift_nm"], passed_cuts=pred["passed_cuts"],
                          **extra)
    methods = {"nn": "NN", "bar_shift": "barycentre shift"}
    if members:
      methods["nn_mean"] = f"NN, mean of {k} checkpoints"
    effs = tuple(float(e) for e in a.signal_efficiencies)
    main_angle = float(a.test_beam_angles_deg[0])
    results: dict[str, Any] = {"data": label, "step": trained.step, "cut_counts": cut_counts,
                               "test_metrics": test_metrics, "evaluation": evaluation,
                               "peak_rss_mib": memory_mib()["peak"],
                               "pairs": {}, "signal_efficiencies": list(effs),
                               "checkpoint_mean_steps": [s for s, _ in members]}
    table_rows: dict[str, dict[str, Any]] = {}
    auc_lines = [f"| signal ({label}) | background | "
                 + " | ".join(f"AUC {name}" for name in methods.values())
                 + " | events (signal / background) |", "|---|---|" + "---|" * len(methods)
                 + "---|"]
    for kind in a.test_signal_kinds:
      for angle in a.test_beam_angles_deg:
        s_split = signal_split(kind, angle)
        for bkg in a.test_background_kinds:
          b_split = background_split(bkg)
          s, b = scores[s_split], scores[b_split]
          entry = {}
          for method in methods:
            entry[method] = {
                "auc": cls_analysis.auc(s[method], b[method]),
                "working_points": cls_analysis.rejection_curve(s[method], b[method], effs)}
          results["pairs"][f"{s_split}/{b_split}"] = entry
          auc_lines.append(f"| {kind}, beam {angle:g}° | {bkg} | "
                           + " | ".join(f"{entry[m]['auc']:.4f}" for m in methods)
                           + f" | {len(s['nn'])} / {len(b['nn'])} |")
          if float(angle) == main_angle:
            for method, name in methods.items():
              for wp in entry[method]["working_points"]:
                if abs(wp["target_signal_efficiency"] - a.table_signal_efficiency) < 1e-9:
                  table_rows[f"{name}: {kind} vs {bkg}"] = wp
    for bkg in a.test_background_kinds:
      b = scores[background_split(bkg)]
      curves = {}
      for kind in a.test_signal_kinds:
        s = scores[signal_split(kind, main_angle)]
        curves[f"NN {kind}"] = {"signal": s["nn"], "background": b["nn"]}
      last = a.test_signal_kinds[-1]
      if members:
        curves[f"{methods['nn_mean']} {last}"] = {
            "signal": scores[signal_split(last, main_angle)]["nn_mean"],
            "background": b["nn_mean"]}
      curves[f"barycentre shift {last}"] = {
          "signal": scores[signal_split(last, main_angle)]["bar_shift"],
          "background": b["bar_shift"]}
      cls_analysis.plot_rejection(
          os.path.join(workdir, f"rejection_{bkg}.png"), curves, label=label,
          title=f"NEWSdm: carbon ions (beam {main_angle:g}°) vs {bkg} ({label})")
    hist = {kind: scores[signal_split(kind, main_angle)]["nn"] for kind in a.test_signal_kinds}
    hist.update({bkg: scores[background_split(bkg)]["nn"] for bkg in a.test_background_kinds})
    cls_analysis.plot_score_histograms(os.path.join(workdir, "scores.png"), hist, label=label,
                                       xlabel="signal logit log p_sig/(1 − p_sig)")
    text = [f"# NEWSdm rejection ({label})", "",
            f"Step {trained.step}. Working points at {100 * a.table_signal_efficiency:g} % "
            f"signal efficiency, carbon beam at {main_angle:g}°; events after the cleaning "
            "cuts.", "", cls_analysis.working_points_markdown(table_rows, label=label),
            "## AUC", "", "\n".join(auc_lines), "", "## Cleaning cuts", "",
            "| test set | events | saturated | brightest | not isolated | kept |",
            "|---|---|---|---|---|---|"]
    for split, c in cut_counts.items():
      if c:
        text.append(f"| {split} | {c['events']} | {c['saturated']} | {c['brightest']} | "
                    f"{c['not_isolated']} | {c['kept']} |")
    text += ["", "## Test sets: loss, accuracy and streamed prediction", "",
             "Over the events passing the cuts; the streamed sets are generated and predicted "
             "chunk by chunk (only the scores are kept). Peak RSS: the whole process so far.",
             "", "| test set | events kept | loss | binary accuracy | 4-class accuracy | "
             "prediction [s] | events/s | CPU [s] | peak RSS [MiB] |",
             "|---|---|---|---|---|---|---|---|---|"]
    for split, m in test_metrics.items():
      e = evaluation[split]
      text.append(f"| {split} | {m['events']} | {m['loss']:.4f} | {m['accuracy']:.4f} | "
                  f"{m['multiclass/accuracy']:.4f} | {e['seconds']:.1f} | "
                  f"{e['events_per_second']:.1f} | {e.get('cpu_seconds', float('nan')):.0f} | "
                  f"{e['peak_rss_mib']:.0f} |")
    io.write_text_atomic(os.path.join(workdir, "newsdm_rejection.md"), "\n".join(text) + "\n")
    io.write_json_atomic(os.path.join(workdir, "newsdm_analysis.json"), results)
    logging.info("NEWSdm analysis written to %s", workdir)
    return {"auc": {k: {m: v[m]["auc"] for m in v} for k, v in results["pairs"].items()},
            "test_metrics": test_metrics}

  def _predict_streamed(self, trained: tasks.Trained, split: str, source
                        ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One pass over a streamed test set: per event the signal logit, the 4 logits and the
    example fields the analysis needs (a few scalars; images are dropped batch by batch),
    and the pass's wall time and memory."""
    before = memory_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    pred = trained.predict(split, outputs=("signal_logit", "logits"),
                           fields=("bar_shift_nm", "passed_cuts", "label", "signal"))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    after = memory_mib()
    n = len(source)
    # CPU seconds (all threads) as well as wall time: on a shared machine the wall time
    # says more about the other jobs than about this pass.
    info = {"events": n, "seconds": seconds, "events_per_second": n / max(seconds, 1e-9),
            "cpu_seconds": cpu, "events_per_cpu_second": n / max(cpu, 1e-9),
            "rss_mib_before": before["rss"], "rss_mib_after": after["rss"],
            "peak_rss_mib": after["peak"]}
    logging.info("NEWSdm: %s: %d events predicted in %.1f s (%.1f events/s; %.1f CPU s), RSS "
                 "%.0f -> %.0f MiB, peak %.0f MiB", split, n, seconds,
                 info["events_per_second"], cpu, before["rss"], after["rss"], after["peak"])
    return pred, info

  def _split_metrics(self, pred: Mapping[str, Any]) -> dict[str, float]:
    """The terms of ``loss_terms`` (as the trainer's closing evaluation reports them) over a
    predicted split, plus ``events`` (those passing the cuts)."""
    batch = {k: np.asarray(pred[k]) for k in ("label", "signal", "passed_cuts")}
    batch["mask"] = np.ones_like(batch["passed_cuts"], np.float32)
    outputs = {k: jnp.asarray(pred["outputs"][k]) for k in ("logits", "signal_logit")}
    terms = self.loss_terms(outputs, batch)
    out = {k: float(s) / max(float(c), 1.0) for k, (s, c) in terms.items()}
    out["events"] = int(np.sum(batch["passed_cuts"] > 0.5))
    return out


def memory_mib() -> dict[str, float]:
  """This process's resident memory now (``rss``) and its peak so far (``peak``), MiB
  (``/proc/self/status`` VmRSS / VmHWM; the peak from ``getrusage`` elsewhere, rss nan)."""
  out = {"rss": float("nan"), "peak": float("nan")}
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
          out["rss" if key == "VmRSS" else "peak"] = float(value.split()[0]) / 1024
  except OSError:
    pass
  if math.isnan(out["peak"]):
    import resource  # pylint: disable=g-import-not-at-top
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2 ** 20
    out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
  return out
