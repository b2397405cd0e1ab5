r"""Toy direction regression: the trainer's smallest end-to-end experiment.

A 2-layer MLP (BatchNorm + Dropout) learns a 3D unit direction from a noisy 16-dim
linear embedding (synthetic; see ``recoil_jax/studies/toy/task.py``) with the TPC paper's
Adam (arXiv 2403.15949; beta 0.94/0.999, eps 1e-7) at lr 1e-3 (10x the paper's: the toy is
tiny) and the paper's early stopping (patience 2 epochs).

Command:
  python -m recoil_jax.main --config=configs/toy.py --workdir=/tmp/toy
  python -m recoil_jax.main --config=configs/toy.py:smoke --workdir=/tmp/toy_smoke

Expected runtime (2-core CPU): default ~15 s (20 epochs x 64 steps; ~5 s of it start-up
and compilation, ~40 orbax saves of ~0.1 s each), ``smoke`` ~8 s; on one GPU about the
same (the model is too small to benefit).
Expected result (synthetic data, seed 0): default final test loss (-cos) -0.991, mean angle
6.8 deg, median 6.2 deg (``toy_analysis.json``); ``smoke`` (2 epochs of 256 examples)
only checks the code path: test loss about -0.5.
"""

import ml_collections

from recoil_jax import config_lib


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The toy config; ``variant``: None (default) or ``"smoke"`` (see ``VARIANTS``)."""
  config = config_lib.base_config()
  config.task = "toy"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.num_train = 4096
  config.data.num_validation = 512
  config.data.num_test = 512
  config.data.noise = 0.3  # Feature noise (features have unit-variance signal per axis).
  config.data.seed = 0  # Data generation seed (independent of the training seed).

  config.model = ml_collections.ConfigDict()
  config.model.hidden = 64
  config.model.dropout_rate = 0.1
  config.model.batch_norm = True
  # A complex spectral-style layer (complex parameter + complex constant collection):
  # exercises the trainer's complex-gradient and constant-collection paths.
  config.model.complex_features = False

  config.train.global_batch_size = 64
  config.train.eval_batch_size = 128
  config.train.num_epochs = 20
  config.train.log_every_steps = 32
  config.train.checkpoint_every_steps = 0  # Epoch ends only.

  config_lib.apply_variants(config, variant, _VARIANT_FNS, config_file="configs/toy.py")
  return config_lib.lock(config)


def _smoke(config):
  config_lib.apply_smoke(config)
  config.data.num_train = 256
  config.data.num_validation = 64
  config.data.num_test = 48


_VARIANT_FNS = {"smoke": _smoke}
VARIANTS = tuple(_VARIANT_FNS)
