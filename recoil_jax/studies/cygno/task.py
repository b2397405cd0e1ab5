"""The CYGNO study (the thesis; arXiv 2007.12508): ER/NR classification and track segmentation.

One task, two problems, chosen by ``config.model.kind``; everything else follows from it:

=================  ===============================  ==========================================
model.kind         data                             model, loss, analysis
=================  ===============================  ==========================================
"dnn" (default)    the variable table (below)       3×10 DNN, binary CE; ER rejection table
"unet", "resunet", simulated frames as the thesis'  ``recoil_jax.nn.unet`` (``model.filters``),
"attresunet"       CNN input + per-pixel labels     per-pixel CE (``config.segmentation``);
                   (``segmentation.py``)            pixel IoU and track efficiency vs energy
"instance"         the same frames + per-track      UNet trunk + track / ER-NR / centre-
                   instances, centres, counts       heatmap / offset heads; mask and
                   (``instances.py``)               box AP50, precision / recall per class
=================  ===============================  ==========================================

One task rather than two studies because both share the simulator, the reconstruction and
the config (the variants ``unet`` / ``resunet`` / ``attresunet`` / ``instance`` switch the
kind and the segmentation data defaults, and combine with ``smoke`` / ``cpu_hour``); every
method of the contract branches once on :attr:`CygnoTask.instances` and
:attr:`CygnoTask.segmentation`, delegating to ``instances.py`` and ``segmentation.py``.

**Classification** (``kind="dnn"``). Data (``dataset.py``): simulated LIME frames
(``sim.py``) → CYGNO-style reconstruction
(``reco.py``: pedestal, zero suppression, median filter, iDBSCAN) → the 14 variables
(``observables.py``) of every cluster matched to a track, cached as one ``.npz`` table
named by a hash of its fields. Examples: ``features`` float32 [F] (the variable set
``config.data.variables``: "All", "Variable_5" or "Variable_9"; symmetric-log then
standardised with the training split's mean and std), ``label`` int32 (1 NR = signal,
0 ER = background), ``energy_kev`` (ionisation energy of the matched track).

Model: the thesis' DNN, 3 hidden layers of 10 (``config.model.hidden``, ReLU) → one logit
(log-odds of NR); loss ``losses.classification.binary_terms`` (binary cross entropy,
accuracies per class), trained by the shared trainer.

Analysis (``analyse``, on the test split): ER rejection at 40 % and 50 % NR efficiency
(``config.analysis.efficiencies``), overall and per energy bin, with Clopper–Pearson
intervals, for the DNN (this run's variable set) and, for every set in
``config.analysis.datasets``, random forest and gradient boosting (``classical.py``,
``analysis.num_trees`` trees), the best per-variable cut, and the δ working points of
arXiv 2007.12508 (literal and retuned); rejection-vs-efficiency curves, per-bin plots,
feature importances; ``cygno_rejection.md`` (one table beside the thesis' numbers) and
``cygno_analysis.json``. Everything is labelled simulated.

**Segmentation** (``kind`` in ``recoil_jax.nn.unet.KINDS``; ``segmentation.py`` has the
data, the loss and the definitions). Examples: ``image`` float32 [H, W] (the thesis' binary
CNN input, 0/1), ``label`` int32 [H, W] (``config.segmentation.classes``: "track" → 0
noise / 1 track, "er_nr" → 0 / 1 ER / 2 NR), ``image_index``. Model: UNet, ResUNet or
attention-residual UNet → ``logits`` [B, H, W, C]; loss: per-pixel cross entropy,
``config.segmentation.balance`` / ``class_weights`` / ``focal_gamma``; metrics: track pixel
IoU / precision / recall. Analysis on the test frames: those pixel metrics for the network,
the classical chain (iDBSCAN cluster hits) and the thresholded input alone; NR (and ER)
reconstruction efficiency vs ionisation energy (``config.segmentation.energy_bins_kev``)
of the network against the classical chain on the same frames, a track counting as
reconstructed when ≥ ``config.segmentation.track_fraction`` of its truth pixels are
predicted track (``segmentation.py``); ``segmentation_efficiency.png``,
``segmentation_displays.png``, ``cygno_segmentation.md`` and
``cygno_segmentation.json``, all labelled simulated.

**Instance segmentation** (``kind="instance"``; ``instances.py`` has the design, the data,
the loss, the decoder and the AP definitions): the seed's Mask R-CNN row, from an
anchor-free fixed-shape network (a UNet trunk, ``model.trunk``, with per-pixel track,
ER / NR, track-centre heatmap and centre-offset heads; why not Mask R-CNN itself: its docstring).
Examples: ``image`` (``config.instances.input``: the binary input or the camera counts),
``label`` (0 noise / 1 ER / 2 NR), ``heatmap``, ``offset``, ``num_centres``,
``image_index``. Analysis on the test frames: mask and box AP at IoU 0.5 per class and
class-agnostic, precision / recall at a score cut tuned on the validation frames
(``config.analysis.instances``), detection efficiency vs energy, against the decoded truth
targets (the encoding ceiling) and the iDBSCAN clusters; ``cygno_instances.md``,
``cygno_instances.json``, ``instance_displays.png``, all labelled simulated.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax import io
from recoil_jax import tasks
from recoil_jax.analysis import classification as clf
from recoil_jax.data import pipeline
from recoil_jax.losses import classification as losses
from recoil_jax.losses import segmentation as seg_losses
from recoil_jax.nn import unet
from recoil_jax.studies.cygno import analysis as cygno_analysis
from recoil_jax.studies.cygno import classical
from recoil_jax.studies.cygno import dataset
from recoil_jax.studies.cygno import instances as inst
from recoil_jax.studies.cygno import observables
from recoil_jax.studies.cygno import reco
from recoil_jax.studies.cygno import segmentation as seg
from recoil_jax.studies.cygno import sim

SPLIT_INDEX = {name: i for i, name in enumerate(dataset.SPLITS)}


class ArraySource:
  """Random-access source over a dict of equal-length numpy arrays."""

  def __init__(self, arrays: Mapping[str, np.ndarray], name: str):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"{name}: fields have different lengths {lengths}")
    self._arrays, self._name = dict(arrays), name
    self._n = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = pipeline.normalise_index(index, self._n, self._name)
    return {k: v[index] for k, v in self._arrays.items()}


class FeatureMLP(nn.Module):
  """``features`` [B, F] → ``logit`` [B] (log-odds of NR) through ReLU hidden layers."""
  hidden: tuple[int, ...] = (10, 10, 10)

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], train: bool) -> dict[str, jax.Array]:
    del train
    h = batch["features"].astype(jnp.float32)
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    return {"logit": nn.Dense(1)(h)[:, 0]}


def symlog(x: np.ndarray) -> np.ndarray:
  """sign(x) · log(1 + |x|): tames the variables' decades-wide ranges for the DNN."""
  return np.sign(x) * np.log1p(np.abs(x))


def sim_config(d) -> sim.SimConfig:
  """The simulator config from ``config.data``."""
  return sim.SimConfig(
      height=d.image_size, width=d.image_size, tracks_per_image=d.tracks_per_image,
      multiplicity=d.multiplicity, nr_fraction=d.nr_fraction,
      er_energy_kev=tuple(d.er_energy_kev), fe55_fraction=d.fe55_fraction,
      nr_ionisation_kev=tuple(d.nr_ionisation_kev), z_range_mm=tuple(d.z_range_mm),
      w_ev=d.w_ev, acceptance=d.acceptance, saturation=d.saturation,
      absorption_length_mm=d.absorption_length_mm,
      er_delta_rays=bool(d.er_physics.delta_rays), er_straggling=bool(d.er_physics.straggling),
      er_electron_spread=bool(d.er_physics.electron_spread),
      er_delta_cut_kev=float(d.er_physics.delta_cut_kev))


def reco_config(r) -> reco.RecoConfig:
  """The reconstruction config from ``config.reco``."""
  return reco.RecoConfig(nsigma=r.nsigma, median_kernel=r.median_kernel,
                         threshold_counts=r.threshold_counts, rebin=r.rebin,
                         weight_unit_counts=r.weight_unit_counts, min_hits=r.min_hits)


class CygnoTask(tasks.Task):
  """The CYGNO study: classification or segmentation by ``config.model.kind`` (module docstring)."""

  def __init__(self, config):
    super().__init__(config)
    self._table = None
    self._columns = None
    self._images = None

  @property
  def segmentation(self) -> bool:
    """True for the segmentation networks, False for the variable DNN and instances."""
    return self.config.model.kind in unet.KINDS

  @property
  def instances(self) -> bool:
    """True for the instance-segmentation network (``instances.py``)."""
    return self.config.model.kind == inst.KIND

  def validate(self) -> None:
    d, a = self.config.data, self.config.analysis
    kind = self.config.model.kind
    if kind != "dnn" and kind not in unet.KINDS and kind != inst.KIND:
      raise ValueError(f"config.model.kind={kind!r}; known: ('dnn',) + {unet.KINDS} + "
                       f"({inst.KIND!r},)")
    if self.instances:
      inst.validate(self.config)
    if self.segmentation:
      s = self.config.segmentation
      if s.classes not in seg.CLASSES:
        raise ValueError(f"config.segmentation.classes={s.classes!r}; known: "
                         f"{sorted(seg.CLASSES)}")
      if s.balance not in seg_losses.BALANCES:
        raise ValueError(f"config.segmentation.balance={s.balance!r}; known: "
                         f"{seg_losses.BALANCES}")
      if s.balance == "light" and len(s.class_weights) != len(seg.CLASSES[s.classes]):
        raise ValueError(f"config.segmentation.class_weights={tuple(s.class_weights)} needs "
                         f"{len(seg.CLASSES[s.classes])} entries for classes={s.classes!r}")
      depth = len(self.config.model.filters) - 1
      if depth < 1 or d.image_size % 2**depth:
        raise ValueError(f"config.data.image_size={d.image_size} must be divisible by "
                         f"2^(len(config.model.filters) - 1) = {2**max(depth, 0)}")
      if not 0 < s.track_fraction <= 1:
        raise ValueError(f"config.segmentation.track_fraction={s.track_fraction} must be "
                         "in (0, 1]")
    if d.variables not in observables.DATASETS:
      raise ValueError(f"config.data.variables={d.variables!r}; known: "
                       f"{sorted(observables.DATASETS)}")
    for name in a.datasets:
      if name not in observables.DATASETS:
        raise ValueError(f"config.analysis.datasets: {name!r} is not one of "
                         f"{sorted(observables.DATASETS)}")
    for key, val in d.definitions.items():
      if key not in observables.DEFINITIONS or val not in observables.DEFINITIONS[key]:
        raise ValueError(f"config.data.definitions.{key}={val!r}; known: "
                         f"{observables.DEFINITIONS}")
    sim_config(d)  # Raises on a bad simulator setting, naming the field.
    reco_config(self.config.reco)

  # -- data -------------------------------------------------------------------------
  def table(self) -> dict[str, Any]:
    """The cached variable table (built on first use)."""
    if self._table is None:
      d = self.config.data
      self._table, path = dataset.load_or_build(
          d.data_dir, sim_config(d), reco_config(self.config.reco),
          num_images=d.num_images, seed=d.seed, definitions=dict(d.definitions),
          split_fractions=tuple(d.split_fractions), chunk_images=d.chunk_images)
      logging.info("cygno: %d clusters from %s", len(self._table["label"]), path)
      for split, i in SPLIT_INDEX.items():
        if not np.any(self._table["split"] == i):
          raise ValueError(f"cygno: the {split} split is empty; raise config.data.num_images")
    return self._table

  def _features(self, names) -> np.ndarray:
    cols = [observables.NAMES.index(n) for n in names]
    return self.table()["features"][:, cols].astype(np.float64)

  def _split(self, split: str) -> ArraySource:
    t = self.table()
    x = symlog(self._features(observables.DATASETS[self.config.data.variables]))
    train = t["split"] == 0
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    sel = t["split"] == SPLIT_INDEX[split]
    return ArraySource({"features": ((x[sel] - mean) / std).astype(np.float32),
                        "label": t["label"][sel], "energy_kev": t["energy_kev"][sel]}, split)

  def images(self) -> dict[str, np.ndarray]:
    """The cached segmentation frames (built on first use; ``segmentation.py``)."""
    if self._images is None:
      d = self.config.data
      self._images, path = seg.load_or_build(
          d.data_dir, sim_config(d), reco_config(self.config.reco),
          num_images=d.num_images, seed=d.seed, split_fractions=tuple(d.split_fractions),
          chunk_images=d.chunk_images, instances=self.instances)
      logging.info("cygno: %d segmentation frames from %s", len(self._images["split"]), path)
      for i, split in enumerate(seg.SPLITS):
        if not np.any(self._images["split"] == i):
          raise ValueError(f"cygno: the {split} split is empty; raise config.data.num_images")
    return self._images

  def train_source(self):
    if self.instances:
      return inst.InstanceSource(self.images(), "train", self.config)
    if self.segmentation:
      return seg.ImageSource(self.images(), "train", self.config.segmentation.classes)
    return self._split("train")

  def eval_sources(self):
    if self.instances:
      return {s: inst.InstanceSource(self.images(), s, self.config)
              for s in ("validation", "test")}
    if self.segmentation:
      return {s: seg.ImageSource(self.images(), s, self.config.segmentation.classes)
              for s in ("validation", "test")}
    return {"validation": self._split("validation"), "test": self._split("test")}

  # -- model and loss ---------------------------------------------------------------
  def build_model(self):
    m = self.config.model
    if self.instances:
      return inst.build_model(self.config)
    if self.segmentation:
      classes = len(seg.CLASSES[self.config.segmentation.classes])
      return seg.CygnoSegmenter(unet.make_unet(m.kind, num_classes=classes,
                                               filters=tuple(m.filters)))
    return FeatureMLP(hidden=tuple(m.hidden))

  def loss_terms(self, outputs, batch) -> tasks.LossTerms:
    if self.instances:
      i = self.config.instances
      return inst.loss_terms(outputs, batch, class_weights=tuple(i.class_weights),
                             type_weight=i.type_weight, heat_weight=i.heat_weight,
                             offset_weight=i.offset_weight,
                             offset_scale_px=i.offset_scale_px)
    if self.segmentation:
      s = self.config.segmentation
      return seg.loss_terms(outputs, batch, balance=s.balance,
                            class_weights=tuple(s.class_weights), focal_gamma=s.focal_gamma)
    return losses.binary_terms(outputs["logit"], batch["label"], batch["mask"],
                               pos_weight=self.config.model.pos_weight)

  # -- analysis ---------------------------------------------------------------------
  def analyse(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    if self.instances:
      return inst.analyse(self.config, self.images(), trained, workdir)
    if self.segmentation:
      return self._analyse_segmentation(trained, workdir)
    a, d = self.config.analysis, self.config.data
    effs = tuple(a.efficiencies)
    keys = [f"{100 * e:g}" for e in effs]
    t = self.table()
    train, test = t["split"] == 0, t["split"] == 2
    y_tr, y_te, e_te = t["label"][train], t["label"][test], t["energy_kev"][test]
    scores: dict[str, np.ndarray] = {}
    thesis_key: dict[str, str | None] = {}
    pred = trained.predict("test", outputs=("logit",), fields=("label",))
    np.testing.assert_array_equal(pred["label"], y_te)  # Same order as the table.
    scores[f"DNN 3×10 ({d.variables})"] = np.asarray(pred["outputs"]["logit"], np.float64)
    thesis_key[f"DNN 3×10 ({d.variables})"] = "DNN" if d.variables == "All" else None
    importances, cuts = {}, {}
    for ds in a.datasets:
      names = observables.DATASETS[ds]
      x = self._features(names)
      rf = classical.fit_random_forest(x[train], y_tr, num_trees=a.num_trees, seed=a.seed,
                                       n_jobs=a.n_jobs)
      gbc = classical.fit_gradient_boosting(x[train], y_tr, num_trees=a.num_trees,
                                            seed=a.seed)
      for model, label, ref in ((rf, "RF", "RF"), (gbc, "GBC", "GBC")):
        name = f"{label} {a.num_trees} trees ({ds})"
        scores[name] = classical.nr_probability(model, x[test])
        thesis_key[name] = ref if ds == "All" else None
        if ds == "All":
          importances[label] = classical.feature_importances(model, names)
    # Per-variable cuts on all 14 variables; the best one (at the first efficiency) shown.
    x_all = self._features(observables.NAMES)
    orient = classical.cut_orientation(x_all[train], y_tr)
    oriented = classical.cut_scores(x_all[test], orient)
    for j, name in enumerate(observables.NAMES):
      cuts[name] = cygno_analysis.working_points(oriented[:, j], y_te, effs)
    best = max(cuts, key=lambda n: cuts[n][keys[0]]["rejection"])
    scores[f"best single-variable cut ({best})"] = oriented[:, observables.NAMES.index(best)]
    thesis_key[f"best single-variable cut ({best})"] = "cuts"
    pixel_mm = self.config.data.pixel_mm
    scores["δ cut after preselection, retuned"] = classical.delta_score(x_all[test],
                                                                       pixel_mm=pixel_mm)
    thesis_key["δ cut after preselection, retuned"] = None
    published = classical.published_delta(x_all[test], y_te, pixel_mm=pixel_mm,
                                          delta_scale=a.delta_scale)

    rows, per_bin = {}, {}
    for name, s in scores.items():
      rows[name] = {"thesis": thesis_key[name],
                    "points": cygno_analysis.working_points(s, y_te, effs)}
      per_bin[name] = cygno_analysis.per_energy_bin(s, y_te, e_te, tuple(a.energy_bins_kev),
                                                    effs)
    extra = ["", f"Published δ working points of arXiv 2007.12508 (δ × {a.delta_scale}; "
             "LEMON units, not converted): " + "; ".join(
                 f"{wp}: NR {100 * v['nr_efficiency']:.1f} %, ER rejection "
                 f"{100 * v['er_rejection']:.2f} %" for wp, v in published.items()
                 if wp.startswith("WP")) + " (simulated)."]
    markdown = cygno_analysis.rejection_markdown(rows, effs, extra=extra)
    clf.plot_rejection(os.path.join(workdir, "rejection_curves.png"),
                       {n: {"signal": s[y_te == 1], "background": s[y_te == 0]}
                        for n, s in scores.items()},
                       title=f"ER rejection vs NR efficiency ({io.SIMULATED})")
    for k in keys:
      cygno_analysis.plot_per_bin(os.path.join(workdir, f"rejection_per_bin_{k}.png"),
                                  per_bin, k)
    if importances:
      cygno_analysis.plot_importances(os.path.join(workdir, "feature_importances.png"),
                                      importances)
    results = {"data": io.SIMULATED, "step": trained.step,
               "table_stats": t["stats"], "num_test": int(test.sum()),
               "working_points": {n: r["points"] for n, r in rows.items()},
               "per_energy_bin": per_bin, "single_variable_cuts": cuts,
               "cut_orientation": dict(zip(observables.NAMES, orient.tolist())),
               "published_delta": published, "feature_importances": importances,
               "auc": {n: clf.auc(s[y_te == 1], s[y_te == 0]) for n, s in scores.items()}}
    cygno_analysis.write_outputs(workdir, results, markdown)
    logging.info("CYGNO analysis written to %s", workdir)
    return {"rejection": {n: {k: r["points"][k]["rejection"] for k in keys}
                          for n, r in rows.items()}}

  def _analyse_segmentation(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    """Pixel metrics and track efficiency vs energy on the test frames (module docstring)."""
    s, kind = self.config.segmentation, self.config.model.kind
    data = self.images()
    pred = trained.predict("test", outputs=("pred",), fields=("image_index",))
    rows = pred["image_index"].astype(np.int64)
    assert np.all(data["classical_done"][rows])  # Built for the test split.
    truth = data["pixel_label"][rows] > 0
    methods = {f"network ({kind})": pred["outputs"]["pred"] > 0,
               "classical (threshold + iDBSCAN)": data["classical"][rows] > 0,
               "thresholded input alone": data["input"][rows] > 0}
    pixel = {name: seg.pixel_metrics(p, truth) for name, p in methods.items()}
    net_name, cl_name = list(methods)[:2]
    in_test = np.isin(data["track_image"], rows)
    t_img, t_idx = data["track_image"][in_test], data["track_index"][in_test]
    t_cls, t_e = data["track_cls"][in_test], data["track_ionisation_kev"][in_test]
    bins = tuple(s.energy_bins_kev)
    efficiency: dict[str, dict[str, list]] = {}
    fractions = {}
    for name in (net_name, cl_name):
      fractions[name] = seg.track_fractions(methods[name], data["instance"], rows, t_img,
                                            t_idx)
    for cls, code in (("NR", sim.NR), ("ER", sim.ER)):
      sel = t_cls == code
      efficiency[cls] = {name: seg.track_efficiency(fractions[name][sel] >= s.track_fraction,
                                                    t_e[sel], bins)
                         for name in (net_name, cl_name)}
    if s.classes == "er_nr":  # Per-class pixel IoU of the network.
      labels = data["pixel_label"][rows]
      for c, cname in ((1, "ER"), (2, "NR")):
        pixel[f"network ({kind}), {cname} pixels"] = seg.pixel_metrics(
            pred["outputs"]["pred"] == c, labels == c)
    seg.plot_efficiency(os.path.join(workdir, "segmentation_efficiency.png"),
                        {f"NR, {n}": c for n, c in efficiency["NR"].items()}
                        | {f"ER, {n}": c for n, c in efficiency["ER"].items()},
                        title="track reconstruction efficiency")
    order = np.argsort(-data["pixel_label"][rows].astype(bool).sum((1, 2)), kind="stable")
    shown = order[:min(s.num_displays, len(rows))]
    if len(shown):
      seg.plot_displays(os.path.join(workdir, "segmentation_displays.png"), [
          {"input": data["input"][rows[i]], "truth": data["pixel_label"][rows[i]],
           "network": pred["outputs"]["pred"][i], "classical": data["classical"][rows[i]]}
          for i in shown])
    md = seg.markdown(kind, pixel, efficiency, s.track_fraction)
    io.write_text_atomic(os.path.join(workdir, "cygno_segmentation.md"), md)
    results = {"data": io.SIMULATED, "step": trained.step, "kind": kind,
               "num_test_frames": int(len(rows)), "num_test_tracks": int(in_test.sum()),
               "track_fraction": s.track_fraction, "pixel_metrics": pixel,
               "efficiency": efficiency,
               "tracks_without_truth_pixels": int(np.sum(data["track_mask_pixels"][in_test]
                                                         == 0))}
    io.write_json_atomic(os.path.join(workdir, "cygno_segmentation.json"), results)
    logging.info("CYGNO segmentation analysis written to %s", workdir)
    return {"pixel_iou": {n: m["iou"] for n, m in pixel.items()},
            "nr_efficiency_first_bin": {n: c[0]["efficiency"]
                                        for n, c in efficiency["NR"].items()}}
