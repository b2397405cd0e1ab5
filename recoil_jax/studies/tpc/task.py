"""TPC electron-recoil direction: dataset, sparse CNN, losses, the source study's Figure 6.

The source study is a report on 3D direction + uncertainty of electron recoils in a gas TPC;
its authors' paper is arXiv 2403.15949 (the "deep" trunk, the vMF head).

Data: simulated electron recoils in He:CO₂ 70:30 at 760 torr
(``recoil_jax.physics.electron_recoils``), or DEGRAD-format files
(``config.data.degrad_files``), preprocessed exactly as the source study (smear → rotate
→ mean-centre → 120³ voxels of 0.5 mm) and stored as a TFDS array_record dataset.
Splits: train / validation (80/20), test_40keV_200um, test_50keV_443um.

Model: ``studies.tpc.model.TpcDirectionNet``; its head is a name in
``nn.direction_heads.HEADS`` (the one table that interprets it, module and loss): "cosine"
(homoscedastic, the source study's eq. 1), "vmf" (heteroscedastic, eq. 2) or "kent" (FB5,
its suggested extension).

Analysis (``analyse``): on both test sets, the source study's Figure 6 (cosine-similarity loss vs
fraction of lowest-κ events removed) with the non-ML moments baseline (skewness head/tail,
true head/tail, parameters grid-searched on the *validation* split), the homoscedastic
point (this run if its head is "cosine", or ``config.analysis.homoscedastic_workdir``),
vMF cone calibration and angular-error histograms. Everything is labelled simulated unless
the data came from files.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from recoil_jax.analysis import direction as direction_analysis
from recoil_jax.losses import direction as direction_losses
from recoil_jax.studies.tpc import analysis as tpc_analysis
from recoil_jax.studies.tpc import moments
from recoil_jax.studies.tpc import source as tpc_source
from recoil_jax.studies.tpc import dataset as tpc_dataset
from recoil_jax.studies.tpc import model as tpc_model
from recoil_jax import io
from recoil_jax import tasks
from recoil_jax.nn import direction_heads

TEST_SPLITS = ("test_40keV_200um", "test_50keV_443um")
PREDICTIONS_FILE = "predictions_{split}.npz"


class TpcDirectionTask(tasks.Task):
  """The TPC direction study as a trainer task (see the module docstring)."""

  def __init__(self, config):
    super().__init__(config)
    self._builder = None

  def validate(self) -> None:
    """Head and trunk names, the DEGRAD globs and the homoscedastic workdir, before step 0."""
    m, a = self.config.model, self.config.analysis
    spec = direction_heads.head_spec(m.head)
    if m.trunk not in tpc_model.TRUNKS:
      raise ValueError(f"config.model.trunk={m.trunk!r}; known: {sorted(tpc_model.TRUNKS)}")
    for split, spec_glob in self.config.data.degrad_files.items():
      patterns = spec_glob.values() if hasattr(spec_glob, "values") else [spec_glob]
      for pattern in (p for p in patterns if p):
        if not glob.glob(os.path.expanduser(str(pattern))):
          raise FileNotFoundError(
              f"config.data.degrad_files.{split}: no file matches {str(pattern)!r}")
    if a.homoscedastic_workdir and spec.heteroscedastic:
      _homoscedastic_paths(a.homoscedastic_workdir)  # Raises if a predictions file is missing.

  # -- data -------------------------------------------------------------------------
  def _dataset(self):
    if self._builder is None:
      d = self.config.data
      data_dir = os.path.abspath(os.path.expanduser(d.data_dir))
      degrad_files = {k: v for k, v in d.degrad_files.items() if v} or None
      reader_kwargs = {"tree": d.degrad_tree or None, "branches": tuple(d.degrad_branches),
                       "unit": d.degrad_unit} if degrad_files else None
      self._builder = tpc_dataset.build_tpc_dataset(
          data_dir,
          num_train_val=d.num_train_val,
          num_test=d.num_test,
          max_voxels=d.max_voxels,
          seed=d.seed,
          energies_kev=tuple(d.energies_kev),
          sigma_range_um=tuple(d.sigma_range_um),
          degrad_files=degrad_files,
          degrad_reader_kwargs=reader_kwargs,
          sim_physics=None if degrad_files else dict(d.sim_physics))
    return self._builder

  def _source(self, split: str) -> tasks.RandomAccessSource:
    return tpc_source.TpcSource(
        self._dataset().as_data_source(split), max_voxels=self.config.data.max_voxels)

  def train_source(self):
    return self._source("train")

  def eval_sources(self):
    return {split: self._source(split) for split in ("validation",) + TEST_SPLITS}

  # -- model and loss ---------------------------------------------------------------
  def build_model(self):
    m = self.config.model
    return tpc_model.TpcDirectionNet(
        trunk=m.trunk, head=m.head, capacity_per_event=tuple(m.capacity_per_event),
        hidden=m.hidden, charge_scale=m.charge_scale, symmetry_augment=m.symmetry_augment,
        sparse_backend=m.sparse_backend)

  def loss_terms(self, outputs: Mapping[str, jax.Array], batch) -> tasks.LossTerms:
    mask = batch["mask"].astype(jnp.float32)
    label = batch["direction"]
    pred = outputs["pred_direction"]
    cos_loss = direction_losses.cosine_similarity_loss(pred, label)
    objective = direction_heads.head_spec(self.config.model.head).nll(outputs, label)
    count = mask.sum()
    terms = {
        "loss": ((objective * mask).sum(), count),
        "cosine_loss": ((cos_loss * mask).sum(), count),
        # Every example of a local batch carries the same overflow count; count it once.
        "error/sparse_capacity_overflow": (
            outputs["overflow"][0].astype(jnp.float32), jnp.float32(1.0)),
    }
    if "kappa" in outputs:
      terms["mean_kappa"] = ((outputs["kappa"] * mask).sum(), count)
    return terms

  # -- analysis ---------------------------------------------------------------------
  def analyse(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    a = self.config.analysis
    head = self.config.model.head
    heteroscedastic = direction_heads.head_spec(head).heteroscedastic
    from_files = any(v for v in self.config.data.degrad_files.values())
    label_kind = "DEGRAD files" if from_files else "simulated"
    nml_params = self._tune_nml_on_validation()
    homo_preds = (_load_homoscedastic(a.homoscedastic_workdir, workdir)
                  if a.homoscedastic_workdir and heteroscedastic else None)
    results: dict[str, Any] = {"data": label_kind, "model_head": head,
                               "nml_grid_search_on": "validation", "nml_tuned": nml_params,
                               "test_sets": {}}
    calibration, errors, num_events = {}, {}, {}
    for split in TEST_SPLITS:
      outputs_wanted = ("pred_direction", "kappa") if heteroscedastic else ("pred_direction",)
      preds = trained.predict(split, outputs=outputs_wanted, fields=("direction",))
      outputs = preds["outputs"]
      pred_dir = np.asarray(outputs["pred_direction"], np.float64)
      true_dir = np.asarray(preds["direction"], np.float64)
      kappa = np.asarray(outputs["kappa"], np.float64) if heteroscedastic else None
      _save_predictions(workdir, split, pred_dir, true_dir, kappa)
      cos_loss = -np.sum(pred_dir * true_dir, axis=-1)
      nml = self._nml_losses(split, nml_params)
      homo = cos_loss if kappa is None else (homo_preds or {}).get(split)
      entry = tpc_analysis.figure6_entry(
          hetero_cos_loss=cos_loss if kappa is not None else None,
          hetero_kappa=kappa,
          homo_cos_loss=homo,
          nml_tuned_params=nml_params, label=label_kind,
          cut_fractions=tuple(a.cut_fractions), **nml)
      if kappa is not None:
        entry["hetero"]["mean_kappa"] = float(kappa.mean())
        calibration[split] = direction_analysis.cone_coverage(
            pred_dir, kappa, true_dir, tuple(a.coverages))
        num_events[split] = len(kappa)
      errors[split] = direction_analysis.angular_errors_deg(pred_dir, true_dir)
      results["test_sets"][split] = entry
    tpc_analysis.plot_figure6(os.path.join(workdir, "figure6.png"), results["test_sets"],
                                    label=label_kind)
    if calibration:
      direction_analysis.plot_calibration(os.path.join(workdir, "calibration.png"),
                                          calibration, tuple(a.coverages),
                                          num_events=num_events, label=label_kind)
      results["calibration"] = {k: np.asarray(v).tolist() for k, v in calibration.items()}
    direction_analysis.plot_angular_error_histograms(
        os.path.join(workdir, "angular_errors.png"), errors, label=label_kind)
    tpc_analysis.write_table(results, workdir, label=label_kind)
    logging.info("TPC analysis written to %s", workdir)
    return results

  # NML baseline ------------------------------------------------------------------------
  def _arrays(self, split: str, limit: int | None = None):
    src = self._source(split)
    n = len(src) if limit is None else min(limit, len(src))
    examples = [src[i] for i in range(n)]
    stack = lambda k: np.stack([e[k] for e in examples])
    return stack("coords"), stack("charges"), stack("num_voxels"), stack("direction")

  def _tune_nml_on_validation(self) -> dict[str, float]:
    """(n_σL, n_σH, w₀) minimising the NML loss on validation events (the source study: on the test set)."""
    a = self.config.analysis
    coords, charges, num_voxels, true_dir = self._arrays("validation", a.nml_grid_events)
    best, _ = moments.grid_search(
        coords, charges, num_voxels, true_dir,
        grid_nsl=tuple(a.nml_grid_nsl), grid_nsh=tuple(a.nml_grid_nsh),
        grid_w0=tuple(a.nml_grid_w0_cm), head_tail="skewness")
    return {k: float(best[k]) for k in ("n_sigma_l", "n_sigma_h", "w0_cm")}

  def _nml_losses(self, split: str, tuned: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per-event cosine losses and failure flags of the three NML variants on a split."""
    coords, charges, num_voxels, true_dir = self._arrays(split)
    out = {}
    for name, kwargs in (("nml", dict(head_tail="skewness")),
                         ("nml_true", dict(head_tail="truth", true_dirs=true_dir)),
                         ("nml_tuned", dict(head_tail="skewness", **tuned))):
      res = moments.moments_directions(coords, charges, num_voxels, **kwargs)
      out[f"{name}_cos_loss"] = -np.sum(np.asarray(res.directions) * true_dir, axis=-1)
      out[f"{name}_failed"] = np.asarray(res.failed)
    return out


def _save_predictions(workdir, split, pred_dir, true_dir, kappa) -> None:
  """Atomically writes this run's test predictions (used by other runs' Figure 6)."""
  arrays = {"pred_direction": pred_dir, "direction": true_dir}
  if kappa is not None:
    arrays["kappa"] = kappa
  io.write_npz_atomic(os.path.join(workdir, PREDICTIONS_FILE.format(split=split)), **arrays)


def _homoscedastic_paths(other_workdir: str) -> dict[str, str]:
  """``{test split: predictions file}`` of a homoscedastic run; raises if one is missing."""
  other = os.path.abspath(os.path.expanduser(other_workdir))
  paths = {split: os.path.join(other, PREDICTIONS_FILE.format(split=split))
           for split in TEST_SPLITS}
  for path in paths.values():
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"config.analysis.homoscedastic_workdir={other_workdir!r}: {path} is missing; run "
          "the homoscedastic config (model.head='cosine') into that workdir first")
  return paths


def _load_homoscedastic(other_workdir: str, workdir: str) -> dict[str, np.ndarray]:
  """Per-event cosine losses per test split of the homoscedastic run ``other_workdir``."""
  out = {}
  for split, path in _homoscedastic_paths(other_workdir).items():
    with np.load(path) as f:
      out[split] = -np.sum(f["pred_direction"] * f["direction"], axis=-1)
  io.write_json_atomic(os.path.join(workdir, "homoscedastic_source.json"),
                       {"workdir": os.path.abspath(os.path.expanduser(other_workdir))})
  return out
