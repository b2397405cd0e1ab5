"""Shared config helpers: the fields every study has, variants, locking, optimisers.

Config files (``configs/*.py``) build on :func:`base_config` and name their variants in
one table, applied by :func:`apply_variants` (``--config=configs/<study>.py:smoke``;
several joined with "+")::

  from recoil_jax import config_lib

  def get_config(variant: str | None = None):
    config = config_lib.base_config()
    config.task = "<study>"  # The folder recoil_jax/studies/<study>/.
    ...
    config_lib.apply_variants(config, variant, _VARIANT_FNS, config_file="configs/<study>.py")
    return config_lib.lock(config)

  def _smoke(config):
    config_lib.apply_smoke(config)
    ...

  _VARIANT_FNS = {"smoke": _smoke}  # name -> function(config), applied in "+" order.
  VARIANTS = tuple(_VARIANT_FNS)

The defaults are generic: Adam with its usual constants (lr 1e-3, β₁ 0.9, β₂ 0.999,
ε 1e-8; Kingma & Ba, arXiv 1412.6980), a constant learning rate, early stopping after 2
epochs without improvement. Each study's config sets its own paper's optimiser. ``optax``
is imported lazily so that config files stay cheap to import.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import ml_collections

OPTIMIZERS = ("adam", "adamw", "nadam", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
MODES = ("train", "evaluate")  # config.mode (recoil_jax.train.train_and_evaluate).
STRATEGIES = ("shard_map", "pmap")  # Data-parallel training strategies (recoil_jax.train).


def base_config() -> ml_collections.ConfigDict:
  """The fields every study has, with generic defaults (see the module docstring).

  Returns:
    An unlocked ConfigDict with ``task``, ``seed``, ``optimizer``, ``train`` and
    ``parallel``; studies add their own sub-dicts (e.g. ``data``, ``model``).
  """
  config = ml_collections.ConfigDict()
  config.task = ""  # The study: a folder of recoil_jax/studies/ (recoil_jax.tasks).
  # "train": train (or resume), then evaluate the best weights and analyse. "evaluate": no
  # training; the workdir's best weights on the task's evaluation splits (any data the
  # config now names), outputs into <workdir>/evaluation/.
  config.mode = "train"
  config.seed = 0

  opt = config.optimizer = ml_collections.ConfigDict()
  opt.name = "adam"  # One of OPTIMIZERS.
  opt.learning_rate = 1e-3  # Peak learning rate.
  opt.b1 = 0.9  # Adam/AdamW/Nadam beta1.
  opt.b2 = 0.999  # Adam/AdamW/Nadam beta2.
  opt.eps = 1e-8  # Adam/AdamW/Nadam/RMSprop epsilon.
  opt.weight_decay = 0.0  # Decoupled (AdamW); L2 added to the gradient otherwise.
  opt.momentum = 0.0  # SGD / RMSprop momentum.
  opt.rmsprop_decay = 0.9  # RMSprop squared-gradient decay.
  opt.grad_clip_norm = 0.0  # Global-norm clipping; 0 = off.
  opt.schedule = "constant"  # One of SCHEDULES.
  opt.warmup_steps = 0  # Linear warm-up (warmup_cosine only).
  opt.end_learning_rate_factor = 0.0  # Cosine end value = factor * learning_rate.

  train = config.train = ml_collections.ConfigDict()
  train.global_batch_size = 64  # Examples per step over all devices and hosts.
  train.num_epochs = 10
  train.steps_per_epoch = 0  # 0 = len(train) // global_batch_size.
  train.eval_batch_size = 64  # Global evaluation batch (last batch padded).
  train.log_every_steps = 50
  train.checkpoint_every_steps = 500  # 0 = only at epoch ends.
  train.max_checkpoints_to_keep = 3
  train.early_stopping_patience = 2  # Epochs without improvement; 0 = off.
  train.progress_bar = True  # tqdm on process 0.
  train.prefetch_batches = 2  # Batches prepared ahead by grain.
  train.data_threads = 2  # grain read threads.
  train.strategy = "shard_map"  # One of STRATEGIES: jit + shard_map, or jax.pmap.
  train.grad_accum_steps = 1  # Micro-batches per device batch (gradient accumulation).

  par = config.parallel = ml_collections.ConfigDict()
  par.distributed = False  # jax.distributed.initialize() with auto-detection.
  par.coordinator_address = ""  # "host:port"; non-empty = explicit multi-process.
  par.num_processes = 1
  par.process_id = 0
  # How long a finished process waits at shutdown for the others (process 0 runs the
  # analysis alone after the final evaluation, which can take longer than jax's 300 s).
  par.shutdown_timeout_s = 3600
  return config


def parse_variants(variant: str | None) -> list[str]:
  """The names of a variant string: ``"a+b+c"`` -> ``["a", "b", "c"]``.

  None and "" mean no variant (``[]``); surrounding whitespace and empty parts
  (``"a++b"``, a trailing "+") are ignored.
  """
  if variant is None:
    return []
  if not isinstance(variant, str):
    raise TypeError(f"variant must be a string like 'a+b' or None, got "
                    f"{type(variant).__name__} {variant!r}")
  return [n.strip() for n in variant.split("+") if n.strip()]


def apply_variants(config: ml_collections.ConfigDict, variant: str | None,
                   table: Mapping[str, Callable[[ml_collections.ConfigDict], Any]], *,
                   config_file: str = "", first: Sequence[str] = ()
                   ) -> ml_collections.ConfigDict:
  """Applies the "+"-joined variants named in ``variant`` to ``config``, in order.

  Args:
    config: the config to change in place (unlocked or locked: variants change existing
      fields).
    variant: ``"a+b+c"`` (see :func:`parse_variants`); None or "" = no variant.
    table: ``{name: function(config)}``, every variant the config file knows.
    config_file: the config file, named in errors (e.g. ``"configs/<study>.py"``).
    first: names applied before all others whatever their position in ``variant``
      (e.g. variants that set sizes, so that ``"batch2+paper"`` doubles the paper's
      batch); the rest keep their order.

  Returns:
    ``config``.

  Raises:
    ValueError: an unknown name (the message names the variant string, the config file
      and the known names), or a name given twice.
  """
  names = parse_variants(variant)
  where = f" of {config_file}" if config_file else ""
  unknown = [n for n in names if n not in table]
  if unknown:
    raise ValueError(f"Unknown variant {unknown[0]!r} in {variant!r}{where}; known: "
                     f"{', '.join(table)}")
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"Variant(s) {repeated} given more than once in {variant!r}{where}")
  bad_first = [n for n in first if n not in table]
  if bad_first:
    raise ValueError(f"apply_variants{where}: first={bad_first} are not in the table")
  for name in sorted(names, key=lambda n: n not in first):  # Stable: order kept otherwise.
    table[name](config)
  return config


def apply_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks the training sizes so the same code path runs in seconds on CPU.

  Studies shrink their own dataset sizes; this only touches ``config.train``.
  """
  train = config.train
  train.num_epochs = min(train.num_epochs, 2)
  train.steps_per_epoch = 0 if train.steps_per_epoch == 0 else min(train.steps_per_epoch, 10)
  train.global_batch_size = min(train.global_batch_size, 16)
  train.eval_batch_size = min(train.eval_batch_size, 16)
  train.log_every_steps = 5
  train.checkpoint_every_steps = 10
  train.progress_bar = False
  return config


def validate_train(train: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks ``config.train``'s strategy and batch sizes against the device count.

  Args:
    train: the ``train`` sub-config (see :func:`base_config`).
    num_devices: devices taking part in training (all processes).

  Raises:
    ValueError: unknown ``train.strategy``; ``train.grad_accum_steps`` not an integer
      >= 1; ``train.global_batch_size`` not divisible by ``num_devices *
      train.grad_accum_steps``; ``train.eval_batch_size`` not divisible by
      ``num_devices``. The message names the config keys and values.
  """
  if train.strategy not in STRATEGIES:
    raise ValueError(f"config.train.strategy={train.strategy!r} is not one of {STRATEGIES}")
  k = train.grad_accum_steps
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"config.train.grad_accum_steps={k!r} must be an integer >= 1")
  if num_devices < 1:
    raise ValueError(f"num_devices must be >= 1, got {num_devices}")
  if train.global_batch_size < 1 or train.global_batch_size % (num_devices * k):
    raise ValueError(
        f"config.train.global_batch_size={train.global_batch_size} must be a positive "
        f"multiple of the number of devices ({num_devices}) x "
        f"config.train.grad_accum_steps ({k}) = {num_devices * k}: every device splits its "
        "batch into grad_accum_steps equal micro-batches")
  if train.eval_batch_size < 1 or train.eval_batch_size % num_devices:
    raise ValueError(
        f"config.train.eval_batch_size={train.eval_batch_size} must be a positive multiple "
        f"of the number of devices ({num_devices})")


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the dict (unknown keys become errors) and returns it."""
  config.lock()
  return config


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int):
  """The learning-rate schedule ``step -> lr`` (an optax schedule)."""
  import optax  # pylint: disable=g-import-not-at-top

  lr = float(opt.learning_rate)
  end = lr * float(opt.end_learning_rate_factor)
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  if opt.schedule == "constant":
    return optax.constant_schedule(lr)
  if opt.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=end / lr if lr else 0.0)
  if opt.schedule == "warmup_cosine":
    warmup = int(opt.warmup_steps)
    if not 0 <= warmup < total_steps:
      raise ValueError(
          f"optimizer.warmup_steps={warmup} must be in [0, total_steps={total_steps})")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=total_steps,
        end_value=end)
  raise ValueError(f"optimizer.schedule={opt.schedule!r} is not one of {SCHEDULES}")


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int):
  """Builds the optax optimiser described by ``config.optimizer``.

  Args:
    opt: the ``optimizer`` sub-config (see :func:`base_config`).
    total_steps: number of training steps (for decaying schedules).

  Returns:
    An ``optax.GradientTransformation`` (clipping, optional L2, then the optimiser).
  """
  import optax  # pylint: disable=g-import-not-at-top

  schedule = make_schedule(opt, total_steps)
  name = opt.name
  if name == "adam":
    core = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif name == "adamw":
    core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=opt.weight_decay)
  elif name == "nadam":  # Adam with Nesterov momentum (Dozat 2016), as Keras' Nadam.
    core = optax.nadam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif name == "sgd":
    core = optax.sgd(schedule, momentum=opt.momentum or None)
  elif name == "rmsprop":
    core = optax.rmsprop(schedule, decay=opt.rmsprop_decay, eps=opt.eps,
                         momentum=opt.momentum or None)
  else:
    raise ValueError(f"optimizer.name={name!r} is not one of {OPTIMIZERS}")
  chain: list[Any] = []
  if opt.grad_clip_norm < 0:
    raise ValueError(f"optimizer.grad_clip_norm must be >= 0, got {opt.grad_clip_norm}")
  if opt.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay and name != "adamw":
    chain.append(optax.add_decayed_weights(opt.weight_decay))
  chain.append(core)
  return optax.chain(*chain)
