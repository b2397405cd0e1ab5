r"""CYGNO: ER/NR discrimination on cluster variables and track segmentation (the thesis;
arXiv 2007.12508).

Simulated LIME frames (He:CF₄ 60:40, 0.152 mm/pixel crops, one recoil per frame by
default, as the thesis simulates one event per image; ER 2–40 keV with 10 % ⁵⁵Fe-like
5.9 keV, He/C/F NRs with the same 2–40 keV *ionisation* energy spectrum), CYGNO-style
reconstruction (pedestal, 1.5σ zero suppression, median filter 3, 4×4 rebin, iDBSCAN with
CYGNO's parameters), the 14 variables per cluster, cached as one table. The thesis' DNN
(3 hidden × 10) trains through the shared trainer; the analysis adds random forest and
gradient boosting (400 trees), per-variable cuts and the published δ working points, on
the datasets All / Variable_5 / Variable_9, and writes the ER-rejection table at 40 / 50 %
NR efficiency (overall and per energy bin, Clopper–Pearson), curves and importances.

Segmentation (``model.kind`` = "unet" / "resunet" / "attresunet", set by the variants of
those names; ``studies/cygno/segmentation.py``): 1–10 keV ER and NR frames (Poisson 2
tracks), the thesis' binary CNN input, per-pixel noise / track labels, the network against
the classical threshold + iDBSCAN chain on the same test frames (pixel IoU, NR and ER
reconstruction efficiency per keV with Clopper–Pearson intervals).

Instance segmentation (``model.kind`` = "instance", variant ``instance``;
``studies/cygno/instances.py``): the seed's Mask R-CNN row (a mask, a box and an ER / NR
class per track) from a fixed-shape anchor-free network — a UNet trunk (``model.trunk``)
with per-pixel track, ER / NR, CenterNet centre-heatmap and centre-offset heads — on the
same frames as the segmentation variants; mask and box AP at IoU 0.5 per class, precision
/ recall at a score cut tuned on the validation frames, against the decoded truth targets
and the iDBSCAN clusters.

Command (variants after the colon):
  python -m recoil_jax.main --config=configs/cygno.py --workdir=runs/cygno
  python -m recoil_jax.main --config=configs/cygno.py:smoke --workdir=/tmp/cygno_smoke
  python -m recoil_jax.main --config=configs/cygno.py:cpu_hour --workdir=runs/cygno_hour
  python -m recoil_jax.main --config=configs/cygno.py:attresunet --workdir=runs/cygno_seg
  python -m recoil_jax.main --config=configs/cygno.py:smoke+unet --workdir=/tmp/cygno_seg
  python -m recoil_jax.main --config=configs/cygno.py:instance --workdir=runs/cygno_instance

Variants:
  (default)   2 000 simulated frames (table 99 s on the 2-core CPU), up to 30 epochs of
              the DNN (early stopping), 400-tree forests: 2 min in total (measured).
  smoke       120 frames, 2 epochs, 10 trees: the same code path in well under a minute.
  cpu_hour    20 000 frames, up to 60 epochs of the DNN (early stopping), 400 trees on
              the three datasets: 19 min 43 s on the shared 2-core CPU (measured;
              results/cygno/cpu_hour; see below).
  unet, resunet, attresunet
              segmentation: 600 frames of 128², filters (8, 16, 32, 64), up to 20 epochs
              of batch 8: 3 min 46 s (attresunet, idle CPU).
  instance    instance segmentation: the segmentation variants' data and training sizes,
              ResUNet trunk (8, 16, 32, 64), camera-counts input
              (``instances.input="binary"``: the thesis' binary input); 4 min 47 s (idle
              CPU, measured below).
  +smoke      (with a network) 32 frames of 64², filters (4, 8), 2 epochs: < 60 s (tested;
              instance: ~30 s of CPU time).
  +cpu_hour   (with a network) 3 000 frames, filters (16, 32, 64, 128), 15 epochs,
              cosine decay, half-keV efficiency bins below 3 keV: ~45 min each on the
              2-core CPU (see below).

Expected runtime (2-core CPU): smoke < 60 s (tested); the others as above. One GPU: not
measured (the DNN is tiny; the table build and the forests are CPU work).
Expected result (simulated, default, measured once with the ER δ-rays and the GEM3
saturation on, results/cygno/classification; 200 NR / 200 ER test clusters, so ±1–2 % CP
intervals): ER rejection at 40 % / 50 % NR efficiency DNN 99.5 / 98.5 %, RF 99.5 / 97.5 %,
GBC 98.5 / 97.5 % (All), best single-variable cut (η) 94.5 / 90.5 % (thesis 83 % at 40 %):
the thesis' ordering ML > cuts. Per energy bin at 50 % the rejection falls to 60–78 % at
2–10 keV (12 / 9 and 32 / 40 test clusters). Without the ER δ-rays and saturation (before
issue 11's realism work) the ML rows were 100 % and the cut 98.5 %.
``cpu_hour`` (simulated, 1 979 NR / 2 021 ER test clusters, results/cygno/cpu_hour), at 40 % /
50 % NR efficiency: DNN 99.65 / 99.21 %, RF 99.11 / 98.07 %, GBC 99.41 / 98.47 %, η cut
92.2 / 89.2 % (thesis 99.43 / 98.50, 99.54 / 98.78, 99.38 / 98.55, 83.13 / –); per energy at
50 %: DNN 44 / 69 / 93 / 99.9 % at 2–5 / 5–10 / 10–20 / 20–40 keV.
Segmentation (simulated; ``attresunet+cpu_hour``, results/cygno/segmentation_hour, 600 test
frames, 1 235 tracks, 42 min on the partly shared 2-core CPU): NR reconstruction
efficiency network vs classical chain 92 vs 68 % at 1–1.5 keV, 97 vs 87 % at 1.5–2 keV,
100 vs 91 % at 2–2.5 keV, both 100 % above 2.5 keV (thesis: ~70 vs ~10 % at 1 keV); pixel
IoU 0.62 vs 0.68 (the network's masks are wider: precision 0.65 vs 0.83). With 10× less
light (``data.acceptance=1.17e-5``, results/cygno/segmentation_lowlight): 29 vs 0 % at
1–1.5 keV, 75 vs 0 % at 1.5–2 keV, network ≥ 97 % and classical ≤ 15 % above 2.5 keV.
Instance segmentation, measured once with the ER δ-rays and GEM3 saturation (simulated;
``instance``, 120 test frames, 251 truth tracks; 4 min 47 s on the idle 2-core CPU):
class-agnostic mask / box AP50 0.70 / 0.88 vs 0.35 / 0.41 for the iDBSCAN clusters (before
them 0.71 / 0.91 vs 0.41 / 0.51); per class ER 0.39 / 0.53, NR 0.00 /
0.00: at 1–10 keV the toy's ER and NR blobs are diffusion-dominated and not separable
(the ER/NR head's AUC was 0.51 before the new defaults, as are simple density / size /
elongation variables), so every instance is called ER. With ``data.er_energy_kev`` and
``data.nr_ionisation_kev`` = (2, 40) (the classification range; results/cygno/instance_2_40):
class-agnostic mask / box AP50 0.58 / 0.68 vs iDBSCAN 0.44 / 0.53, but the ER/NR head does
not learn in this budget (type loss ≈ ln 2 at the early stop), so NR AP50 0.00 and ER 0.13
(before the δ-rays and saturation: NR 0.44, ER 0.16); the same masks named by a random
forest on their 14 variables (``analysis.instances.variable_classes``) give NR 0.61, ER
0.08. Long 20–40 keV ERs are mostly missed (9 %) by the centre voting.
``instance+cpu_hour`` (results/cygno/instance_hour, 600 test frames, 1 235 tracks, 52 min on
the partly shared CPU): class-agnostic mask / box AP50 0.83 / 0.94 vs iDBSCAN 0.38 / 0.49.
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
  # Lens acceptance Ω; the light yield (counts per keV) is proportional to it, so lowering it
  # scans the signal-to-noise ratio (the segmentation comparison depends on it strongly).
  # At 1.17e-4 the nominal GEM chain gives ≈ 1 840 counts/keV; with the default GEM3
  # saturation (fitted to LIME's ⁵⁵Fe data) a 5.9 keV spot gives ≈ 820-1 450 counts/keV at
  # 50-450 mm of drift (simulated; scripts/cygno_light_yield.py, studies/cygno/sim.py).
  data.acceptance = 1.17e-4
  # GEM3 saturation (the CYGNO digitiser's A·n·G₃/(1 + β·G₃·n) per voxel, fitted with a
  # 1400 mm absorption length on LIME's ⁵⁵Fe images; studies/cygno/sim.py). False with
  # absorption_length_mm=1000 gives the simulator before issue 11's light-yield check.
  data.saturation = True
  data.absorption_length_mm = 1400.0  # Primary-electron absorption length; 0 = none.
  # The ER transport's δ-rays above delta_cut_kev, straggling below it and the ionisation
  # electrons' spread (recoil_jax/physics/electron_recoil_physics.py); all False gives the ERs of
  # before issue 11's realism work (cleaner tracks, easier to cut).
  data.er_physics = ml_collections.ConfigDict(dict(
      delta_rays=True, straggling=True, electron_spread=True, delta_cut_kev=1.0))
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
  # "dnn": ER/NR classification of cluster variables; "unet" / "resunet" / "attresunet":
  # track / noise segmentation of frames; "instance": a mask, box and ER/NR class per
  # track (set by the variants of the same names).
  model.kind = "dnn"
  model.hidden = (10, 10, 10)  # The thesis' DNN: 3 hidden layers of 10.
  model.pos_weight = 1.0  # Weight of the NR term of the cross entropy.
  model.filters = (8, 16, 32, 64)  # UNet filters per level (segmentation kinds only).
  model.trunk = "resunet"  # The "instance" kind's UNet trunk: unet, resunet, attresunet.

  seg = config.segmentation = ml_collections.ConfigDict()  # Segmentation kinds only.
  seg.classes = "track"  # "track" (noise / track) or "er_nr" (noise / ER / NR).
  seg.balance = "light"  # recoil_jax.losses.segmentation: light, full, none, focal.
  seg.class_weights = (1.0, 5.0)  # Per class for "light" (track pixels are ~1 %).
  seg.focal_gamma = 2.0
  # A track is reconstructed when >= this fraction of its truth pixels are predicted track.
  seg.track_fraction = 0.5
  seg.energy_bins_kev = tuple(float(e) for e in range(1, 11))  # Ionisation energy bins.
  seg.num_displays = 4  # Test frames drawn in segmentation_displays.png.

  # Instance segmentation (model.kind = "instance"; studies/cygno/instances.py).
  inst = config.instances = ml_collections.ConfigDict()
  # "counts": asinh(median-filtered pedestal-subtracted counts / s), the light density that
  # tells ER from NR; "binary": the thesis' thresholded CNN input (no intensity).
  inst.input = "counts"
  inst.counts_scale = 10.0  # s: camera counts per unit of the "counts" input's asinh.
  inst.sigma_px = 2.0  # σ of each centre's Gaussian in the heatmap target, pixels.
  inst.class_weights = (1.0, 5.0)  # Per-pixel noise / track CE weights.
  inst.type_weight = 1.0  # × ER / NR cross entropy over the track pixels.
  inst.heat_weight = 1.0  # × CenterNet focal loss of the centre heatmap.
  inst.offset_weight = 1.0  # × mean L1 of the centre offsets (units of offset_scale_px).
  inst.offset_scale_px = 8.0
  inst.peak_threshold = 0.05  # Minimum heat of a centre (low: AP integrates all scores).
  inst.max_instances = 16  # K: the most instances decoded per frame (fixed shape).

  analysis = config.analysis = ml_collections.ConfigDict()
  analysis.datasets = ("All", "Variable_5", "Variable_9")  # For RF / GBC.
  analysis.num_trees = 400
  analysis.n_jobs = 1  # scikit-learn workers for the random forest.
  analysis.seed = 0
  analysis.efficiencies = (0.4, 0.5)  # NR efficiencies of the working points.
  analysis.energy_bins_kev = (2.0, 5.0, 10.0, 20.0, 40.0)
  analysis.delta_scale = 1.0  # Our δ (counts/pixel) × this = LEMON's δ for the WP cuts.
  # The "instance" kind's analysis (here, so that config.mode="evaluate" may change it).
  ai = analysis.instances = ml_collections.ConfigDict()
  ai.iou_threshold = 0.5  # AP50 and the operating point's matching.
  # Operating point of the per-class precision / recall: the score cut with the best
  # class-agnostic mask F1 on the validation frames, or (False) score_threshold.
  ai.tune_threshold = True
  ai.score_threshold = 0.3
  ai.energy_bins_kev = (1.0, 2.0, 3.0, 5.0, 10.0)  # Detection efficiency bins.
  ai.num_displays = 4  # Test frames drawn in instance_displays.png.
  # A second row, "network masks + variable RF classes": the network's masks named ER / NR
  # by a random forest (analysis.num_trees) on the 14 cluster variables, trained on the
  # truth masks of the training frames (instances.py); False: the analysis as before.
  ai.variable_classes = True

  config.optimizer.learning_rate = 3e-3
  config.train.global_batch_size = 64
  config.train.eval_batch_size = 256
  config.train.num_epochs = 30
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 0  # Epoch ends only.
  config.train.early_stopping_patience = 5

  config_lib.apply_variants(config, variant, _VARIANT_FNS, config_file="configs/cygno.py",
                            first=_NETWORKS)
  return config_lib.lock(config)


def _smoke(config):
  config_lib.apply_smoke(config)
  if config.model.kind != "dnn":  # Segmentation: tiny frames and network.
    config.data.num_images = 32
    config.data.image_size = 64
    config.model.filters = (4, 8)  # One level (and gate): half the compile time of two.
    config.train.global_batch_size = 8
    config.analysis.num_trees = 10  # The instances' variable-class forest.
    return
  config.data.num_images = 120
  config.data.image_size = 128
  config.analysis.num_trees = 10
  config.analysis.energy_bins_kev = (2.0, 10.0, 40.0)


def _cpu_hour(config):
  if config.model.kind != "dnn":  # Segmentation / instances: ~1 h on the 2-core CPU.
    config.data.num_images = 3000
    config.model.filters = (16, 32, 64, 128)
    config.train.num_epochs = 15
    config.optimizer.schedule = "cosine"
    config.optimizer.end_learning_rate_factor = 0.05
    # Half-keV bins below 3 keV, where the network and the classical chain differ.
    config.segmentation.energy_bins_kev = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0,
                                           9.0, 10.0)
    config.analysis.instances.energy_bins_kev = (1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0)
    return
  config.data.num_images = 20000
  config.train.num_epochs = 60
  config.train.early_stopping_patience = 8
  config.optimizer.schedule = "cosine"
  config.optimizer.end_learning_rate_factor = 0.05


def _segmentation(kind):
  """Track / noise segmentation (or, ``kind="instance"``, instance segmentation) with the
  network ``kind`` on 1–10 keV frames."""

  def apply(config):
    if config.model.kind != "dnn":
      raise ValueError(f"configs/cygno.py: two segmentation networks in one variant string "
                       f"({config.model.kind!r} and {kind!r})")
    config.model.kind = kind
    d = config.data
    d.num_images = 600
    d.image_size = 128
    d.tracks_per_image = 2.0
    d.multiplicity = "poisson"
    d.er_energy_kev = (1.0, 10.0)  # The thesis' efficiency plot: 1–10 keV.
    d.nr_ionisation_kev = (1.0, 10.0)
    config.optimizer.learning_rate = 1e-3
    config.train.global_batch_size = 8
    config.train.eval_batch_size = 16
    config.train.num_epochs = 20
    config.train.early_stopping_patience = 4

  return apply


# The network variants come first (sizes in smoke / cpu_hour depend on the kind), so
# "smoke+unet" and "unet+smoke" are the same run.
_NETWORKS = ("unet", "resunet", "attresunet", "instance")
_VARIANT_FNS = {"smoke": _smoke, "cpu_hour": _cpu_hour,
                **{k: _segmentation(k) for k in _NETWORKS}}
VARIANTS = tuple(_VARIANT_FNS)
