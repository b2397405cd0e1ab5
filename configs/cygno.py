r"""CYGNO ER/NR discrimination on cluster variables (the thesis; arXiv 2007.12508).

Simulated LIME frames (He:CF₄ 60:40, 0.152 mm/pixel crops, one recoil per frame by
default, as the thesis simulates one event per image; ER 2–40 keV with 10 % ⁵⁵Fe-like
5.9 keV, He/C/F NRs with the same 2–40 keV *ionisation* energy spectrum), CYGNO-style
reconstruction (pedestal, 1.5σ zero suppression, median filter 3, 4×4 rebin, iDBSCAN with
CYGNO's parameters), the 14 variables per cluster, cached as one table. The thesis' DNN
(3 hidden × 10) trains through the shared trainer; the analysis adds random forest and
gradient boosting (400 trees), per-variable cuts and the published δ working points, on
the datasets All / Variable_5 / Variable_9, and writes the ER-rejection table at 40 / 50 %
NR efficiency (overall and per energy bin, Clopper–Pearson), curves and importances.

Command (variants after the colon):
  python -m recoil_jax.main --config=configs/cygno.py --workdir=runs/cygno
  python -m recoil_jax.main --config=configs/cygno.py:smoke --workdir=/tmp/cygno_smoke
  python -m recoil_jax.main --config=configs/cygno.py:cpu_hour --workdir=runs/cygno_hour

Variants:
  (default)   2 000 simulated frames (table 99 s on the 2-core CPU), up to 30 epochs of
              the DNN (early stopping), 400-tree forests: 2 min in total (measured).
  smoke       120 frames, 2 epochs, 10 trees: the same code path in well under a minute.
  cpu_hour    provisional: 20 000 frames (table ~20 min), 60 epochs, 400 trees on the
              three datasets; not yet run end to end.

Expected runtime (2-core CPU): smoke < 60 s (tested); the others as above. One GPU: not
measured (the DNN is tiny; the table build and the forests are CPU work).
Expected result (simulated, default, measured once; 200 NR / 200 ER test clusters, so
±1 % CP intervals): ER rejection at 50 % NR efficiency DNN 99.0 %, RF 99.5 %, GBC 99.5 %
(All), best single-variable cut (eta) 95.5 %: the thesis' ordering ML > cuts, with cuts
far better than its 83 % (the toy has no δ-rays: studies/cygno/sim.py). Per
energy bin the rejection falls to 33–67 % at 2–5 keV (12 / 9 test clusters).
"""

import ml_collections

from recoil_jax import config_lib


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The CYGNO classification config; ``variant``: None or "+"-joined ``VARIANTS``."""
  config = config_lib.base_config()
  config.task = "cygno"
  config.seed = 0

  data = config.data = ml_collections.ConfigDict()
  data.data_dir = "~/recoil_jax_data"  # The cached table goes to <data_dir>/cygno/.
  data.num_images = 2000  # Simulated frames (train + validation + test).
  data.seed = 0  # Simulation seed (independent of the training seed).
  data.split_fractions = (0.6, 0.2, 0.2)  # Per frame: train, validation, test.
  data.chunk_images = 64  # Frames simulated together.
  data.image_size = 256  # Crop side, pixels (LIME: 2304).
  data.pixel_mm = 0.152  # Used by the δ preselection (l_p < 6.3 cm).
  data.tracks_per_image = 1.0
  data.multiplicity = "fixed"  # "fixed" or "poisson" (≥ 1).
  data.nr_fraction = 0.5
  data.er_energy_kev = (2.0, 40.0)  # The thesis' table: 2–40 keV.
  data.nr_ionisation_kev = (2.0, 40.0)  # NR ionisation (visible) energy, keV.
  data.fe55_fraction = 0.1
  data.z_range_mm = (20.0, 480.0)  # Drift distance.
  data.w_ev = 46.2  # W of He:CF4 used by the CYGNO digitiser (34-54 eV in the literature).
  data.variables = "All"  # The DNN's inputs: "All", "Variable_5" or "Variable_9".
  # Where CYGNO's 2-D code and the paper differ: "paper" (default) or "cygno_code".
  data.definitions = ml_collections.ConfigDict(
      dict(CylThick="paper", LAPA="paper", ChargeUnif="paper"))

  rec = config.reco = ml_collections.ConfigDict()
  rec.nsigma = 1.5  # Zero suppression at nsigma × the pixel's noise σ.
  rec.median_kernel = 3
  rec.threshold_counts = 1.0  # After the median filter.
  rec.rebin = 4
  rec.weight_unit_counts = 100.0  # Counts per unit of DBSCAN sample weight (rebinned).
  rec.min_hits = 4

  model = config.model = ml_collections.ConfigDict()
  model.hidden = (10, 10, 10)  # The thesis' DNN: 3 hidden layers of 10.
  model.pos_weight = 1.0  # Weight of the NR term of the cross entropy.

  analysis = config.analysis = ml_collections.ConfigDict()
  analysis.datasets = ("All", "Variable_5", "Variable_9")  # For RF / GBC.
  analysis.num_trees = 400
  analysis.n_jobs = 1  # scikit-learn workers for the random forest.
  analysis.seed = 0
  analysis.efficiencies = (0.4, 0.5)  # NR efficiencies of the working points.
  analysis.energy_bins_kev = (2.0, 5.0, 10.0, 20.0, 40.0)
  analysis.delta_scale = 1.0  # Our δ (counts/pixel) × this = LEMON's δ for the WP cuts.

  config.optimizer.learning_rate = 3e-3
  config.train.global_batch_size = 64
  config.train.eval_batch_size = 256
  config.train.num_epochs = 30
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 0  # Epoch ends only.
  config.train.early_stopping_patience = 5

  config_lib.apply_variants(config, variant, _VARIANT_FNS, config_file="configs/cygno.py")
  return config_lib.lock(config)


def _smoke(config):
  config_lib.apply_smoke(config)
  config.data.num_images = 120
  config.data.image_size = 128
  config.analysis.num_trees = 10
  config.analysis.energy_bins_kev = (2.0, 10.0, 40.0)


def _cpu_hour(config):
  config.data.num_images = 20000
  config.train.num_epochs = 60
  config.train.early_stopping_patience = 8
  config.optimizer.schedule = "cosine"
  config.optimizer.end_learning_rate_factor = 0.05


_VARIANT_FNS = {"smoke": _smoke, "cpu_hour": _cpu_hour}
VARIANTS = tuple(_VARIANT_FNS)
