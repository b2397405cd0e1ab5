"""NEWSnet_3D and a plain 3D CNN over (y, x, polarisation), with rotation augmentation.

Layout: the input ``batch["image"]`` is float32 [B, 40, 40, 9] (rows y, columns x, 8
polarisations + pol0 repeated; 8-bit counts / 256, the authors' format); the networks see
it as a one-channel 3D image [B, 40, 40, 9, 1] and convolve over (y, x, polarisation).
Outputs: ``logits`` float32 [B, 4] over (C30, C60, C100, background) and ``signal_logit``
float32 [B] = log p_sig / (1 − p_sig) with p_sig = p_C30 + p_C60 + p_C100 (the score of
the analysis: a logit keeps its resolution where p_sig rounds to 1 in float32).

NEWSnet_3D (``golovart/Napoli_emulsion:NEWSdm/NewsNet70nm``, arXiv 2106.11995; Keras):
Conv3D(32, 3, valid) → Conv3D(64, 3, same) → MaxPool3D(2) → Dropout(clip(1.2 − d_mid −
d_end, 0.1, 0.4)) → ResNet convolutional block (stride 2, filters 64/64/256, 1×1–3×3–1×1
with BatchNorm (Keras' momentum and ε; moving statistics debiased, ``DebiasedBatchNorm``),
3×3 stride-2 projection shortcut, dropout 0.4) → 3 identity blocks →
MaxPool3D(2, same) → Dropout(d_mid) → convolutional block (stride 1, 128/128/512) → 3
identity blocks → Dropout(d_end) → Flatten → Dense(4). Swish everywhere; shapes 40×40×9 →
38×38×7 → 19×19×3 → 10×10×2 → 5×5×1. ``width`` scales every filter count (1 = the
authors'), ``identity_blocks`` the blocks per stage (3 = the authors').

Max-norm 4: Keras' ``MaxNorm(4)`` projects each output filter of every conv kernel back
to norm ≤ 4 after every optimiser update. The shared trainer owns the update, so here it
is a **kernel constraint in the forward pass**: every conv uses ``w · min(1, 4/‖w‖)`` per
output filter (norm over the spatial and input axes). The kernel the network applies
always obeys the bound (what the projection guarantees); the stored weights may exceed
it, and the gradient flows through the rescaling — so the training dynamics differ
slightly from a projection.

Augmentation (``train=True`` only, one transform per example, the same for all 8
polarisation images; channel 9 is rebuilt from pol0 afterwards):

* ``"source"``: the source study's rotation by a random multiple of 15° in [−90°, 90°],
  the polarisation axis untouched (the authors used cubic ``skimage.transform.rotate``
  with symmetric padding; here bilinear with ``reflect`` padding).
* ``"cycled"``: the physically consistent version: rotate by α = m·22.5° (m uniform in
  0..15) after a random mirror, and cycle the polarisation axis with it — rotating a scene
  by α shifts every grain's polarisation response by α, so image k of the rotated event
  is the rotated image (k − m) mod 8 (with the mirror, (m − k) mod 8); ``sim.rotate_scenes``
  is the reference the tests compare with.
* ``exact_only``: restrict either to multiples of 90° (and, for ``"cycled"``, mirrors),
  done with exact pixel permutations (no interpolation, so nothing smooths the noise).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NUM_POLARISATIONS = 8
NUM_CLASSES = 4  # C30, C60, C100, background.
NUM_SIGNAL_CLASSES = 3
AUGMENTATIONS = ("none", "source", "cycled")
ARCHITECTURES = ("newsnet3d", "plain3d")


# ----------------------------------------------------------------------------- augmentation


def _pixel_coords(size: int) -> jax.Array:
  return jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2


def rotate_bilinear(images: jax.Array, angle_rad: jax.Array, mirror: jax.Array | None = None
                    ) -> jax.Array:
  """Rotates each example's images by its angle (counter-clockwise from +x towards +y)
  about the crop centre, after mirroring x → −x where ``mirror``; bilinear, reflect padding.

  Args:
    images: float [B, H, W, P].
    angle_rad: float [B].
    mirror: bool [B] or None.

  Returns:
    float [B, H, W, P]: ``out(p) = in(M R⁻¹ p)`` (the scene moved by R after M).
  """
  b, h, w, _ = images.shape
  ys, xs = jnp.meshgrid(_pixel_coords(h), _pixel_coords(w), indexing="ij")
  if mirror is None:
    mirror = jnp.zeros((b,), bool)

  def one(img, a, m):
    c, s = jnp.cos(a), jnp.sin(a)
    x0 = c * xs + s * ys  # R⁻¹ (x, y).
    y0 = -s * xs + c * ys
    x0 = jnp.where(m, -x0, x0)
    coords = [y0 + (h - 1) / 2, x0 + (w - 1) / 2]
    per_channel = lambda ch: jax.scipy.ndimage.map_coordinates(ch, coords, order=1,
                                                               mode="reflect")
    return jax.vmap(per_channel, in_axes=-1, out_axes=-1)(img)

  return jax.vmap(one)(images, angle_rad, mirror)


def rotate_exact(images: jax.Array, quarter_turns: jax.Array, mirror: jax.Array | None = None
                 ) -> jax.Array:
  """:func:`rotate_bilinear` for angles ``quarter_turns · 90°`` as exact pixel permutations.

  Args:
    images: [B, H, W, P] with H = W; quarter_turns: int [B]; mirror: bool [B] or None.
  """
  if mirror is not None:
    images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
  # out(x, y) = in(R⁻¹(x, y)); a quarter turn: out[r, c] = in[c, W − 1 − r].
  turns = [images]
  for _ in range(3):
    turns.append(jnp.swapaxes(turns[-1], 1, 2)[:, :, ::-1])
  stacked = jnp.stack(turns)  # [4, B, H, W, P]
  k = jnp.mod(quarter_turns, 4)
  return jnp.take_along_axis(stacked, k[None, :, None, None, None], axis=0)[0]


def cycle_polarisations(images: jax.Array, steps: jax.Array, mirror: jax.Array | None = None
                        ) -> jax.Array:
  """Channel k ← channel (k − m) mod 8, or (m − k) mod 8 where ``mirror``: [B, H, W, 8]."""
  k = jnp.arange(NUM_POLARISATIONS)
  src = jnp.mod(k[None, :] - steps[:, None], NUM_POLARISATIONS)
  if mirror is not None:
    src = jnp.where(mirror[:, None], jnp.mod(steps[:, None] - k[None, :], NUM_POLARISATIONS),
                    src)
  return jnp.take_along_axis(images, src[:, None, None, :], axis=-1)


def augment(images: jax.Array, rng: jax.Array, mode: str, exact_only: bool = False
            ) -> jax.Array:
  """One random transform per example (module docstring). ``images`` [B, H, W, 9] -> same."""
  if mode == "none":
    return images
  if mode not in AUGMENTATIONS:
    raise ValueError(f"augment: mode {mode!r}; known: {AUGMENTATIONS}")
  pols = images[..., :NUM_POLARISATIONS]
  b = images.shape[0]
  k_angle, k_mirror = jax.random.split(rng)
  if mode == "source":
    if exact_only:
      turns = jax.random.randint(k_angle, (b,), -1, 2)
      out = rotate_exact(pols, turns)
    else:
      steps15 = jax.random.randint(k_angle, (b,), -6, 7)
      out = rotate_bilinear(pols, jnp.radians(15.0 * steps15))
  else:  # cycled
    mirror = jax.random.bernoulli(k_mirror, 0.5, (b,))
    if exact_only:
      turns = jax.random.randint(k_angle, (b,), 0, 4)
      m = 4 * turns
      out = rotate_exact(pols, turns, mirror)
    else:
      m = jax.random.randint(k_angle, (b,), 0, 2 * NUM_POLARISATIONS)
      out = rotate_bilinear(pols, jnp.radians(22.5 * m), mirror)
    out = cycle_polarisations(out, m, mirror)
  return jnp.concatenate([out, out[..., :1]], axis=-1)


# ----------------------------------------------------------------------------- layers


class MaxNormConv(nn.Module):
  """3D convolution whose applied kernel has per-output-filter norm ≤ ``max_norm``.

  Kernel [kd, kh, kw, in, out] (Glorot-uniform, Keras' default), bias zeros; see the
  module docstring for how the constraint differs from Keras' projection.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  padding: str = "SAME"
  max_norm: float = 4.0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", nn.initializers.glorot_uniform(), shape)
    if self.max_norm > 0:
      norm = jnp.sqrt(jnp.sum(kernel * kernel, axis=(0, 1, 2, 3), keepdims=True))
      kernel = kernel * jnp.minimum(1.0, self.max_norm / (norm + 1e-7))
    y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), tuple(self.strides),
                                     self.padding,
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class DebiasedBatchNorm(nn.Module):
  """Keras' BatchNormalization (momentum, ε 1e-3) with zero-debiased moving statistics.

  Keras and ``flax.linen.BatchNorm`` start the moving variance at 1 and decay it towards
  the batch variances as ``v ← m·v + (1 − m)·σ²_batch``: after t steps the start value
  still weighs m^t. The authors train ~24 000 steps (0.99^24000 ≈ 0), but a CPU-size run of
  a few hundred steps keeps 0.99^174 = 17 % of it — against batch variances of ~10⁻⁵ (8-bit
  counts / 256, mostly pedestal-subtracted zeros) that divides every activation by ~100
  at evaluation, and the network's scores collapse to a constant (seen on the default
  config: signal-logit spread 5·10⁻⁵ at evaluation). Here the moving sums start at 0 and
  the evaluation divides them by their total weight ``1 − m^t`` (kept as ``weight``), as
  Adam debiases its moments: the average of the batch statistics seen, exponentially
  weighted, from the first step on; identical to Keras' once m^t ≈ 0. Never-trained
  statistics (weight 0) fall back to mean 0, variance 1.
  """
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    zeros = lambda: jnp.zeros((features,), jnp.float32)  # noqa: E731
    moving_mean = self.variable("batch_stats", "mean", zeros)
    moving_var = self.variable("batch_stats", "var", zeros)
    weight = self.variable("batch_stats", "weight", lambda: jnp.zeros((), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    if self.use_running_average:
      w = weight.value
      trained = w > 0
      mean = jnp.where(trained, moving_mean.value / jnp.where(trained, w, 1.0), 0.0)
      var = jnp.where(trained, moving_var.value / jnp.where(trained, w, 1.0), 1.0)
    else:
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axes)
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        m = self.momentum
        moving_mean.value = m * moving_mean.value + (1 - m) * mean
        moving_var.value = m * moving_var.value + (1 - m) * var
        weight.value = m * weight.value + (1 - m)
    y = (x - mean.astype(x.dtype)) * jax.lax.rsqrt(var + self.epsilon).astype(x.dtype)
    return y * scale.astype(x.dtype) + bias.astype(x.dtype)


def _bn(train: bool, momentum: float = 0.99) -> DebiasedBatchNorm:
  return DebiasedBatchNorm(use_running_average=not train, momentum=momentum,
                           epsilon=1e-3)  # Keras' ε.


class ResBlock(nn.Module):
  """Keras-ResNet bottleneck: 1×1 (stride) → 3×3 → 1×1, BN after each, swish; identity or
  3×3 strided projection shortcut (``project``)."""
  filters: tuple[int, int, int]
  strides: int = 1
  project: bool = False
  max_norm: float = 4.0
  dropout: float = 0.0
  bn_momentum: float = 0.99

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    f1, f2, f3 = self.filters
    s = (self.strides,) * 3
    conv = lambda f, k, st=(1, 1, 1): MaxNormConv(f, (k,) * 3, st, max_norm=self.max_norm)
    bn = lambda: _bn(train, self.bn_momentum)  # noqa: E731
    h = nn.swish(bn()(conv(f1, 1, s)(x)))
    h = nn.swish(bn()(conv(f2, 3)(h)))
    h = bn()(conv(f3, 1)(h))
    shortcut = bn()(conv(f3, 3, s)(x)) if self.project else x
    out = nn.swish(h + shortcut)
    if self.dropout > 0:
      out = nn.Dropout(self.dropout, deterministic=not train)(out)
    return out


def _signal_logit(logits: jax.Array) -> jax.Array:
  """log p_sig/(1 − p_sig) with p_sig the summed softmax of the first 3 classes: [B]."""
  return (jax.nn.logsumexp(logits[:, :NUM_SIGNAL_CLASSES], axis=-1)
          - jax.nn.logsumexp(logits[:, NUM_SIGNAL_CLASSES:], axis=-1))


def _input_volume(module: nn.Module, batch: Mapping[str, Any], train: bool) -> jax.Array:
  """``batch["image"]`` [B, H, W, 9] as float32 [B, H, W, 9, 1], augmented in training with
  the module's ``augment`` / ``exact_only`` (one transform per example, ``dropout`` stream)."""
  x = jnp.asarray(batch["image"], jnp.float32)
  if train and module.augment != "none":
    x = augment(x, module.make_rng("dropout"), module.augment, module.exact_only)
  return x[..., None]


class NewsNet3D(nn.Module):
  """The authors' NEWSnet_3D (module docstring); ``apply(v, batch, train)`` -> outputs."""
  width: float = 1.0
  identity_blocks: int = 3
  d_mid: float = 0.3
  d_end: float = 0.0
  block_dropout: float = 0.4
  max_norm: float = 4.0
  augment: str = "none"
  exact_only: bool = False
  bn_momentum: float = 0.99  # Keras' default; the moving statistics are debiased.

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], train: bool) -> dict[str, jax.Array]:
    x = _input_volume(self, batch, train)  # [B, 40, 40, 9, 1]
    f = lambda n: max(1, int(round(n * self.width)))
    conv = lambda n, padding: MaxNormConv(f(n), (3, 3, 3), padding=padding,
                                          max_norm=self.max_norm)
    x = nn.swish(conv(32, "VALID")(x))
    x = nn.swish(conv(64, "SAME")(x))
    x = nn.max_pool(x, (2, 2, 2), (2, 2, 2), "VALID")
    d0 = float(np.clip(1.2 - self.d_mid - self.d_end, 0.1, 0.4))
    x = nn.Dropout(d0, deterministic=not train)(x)
    for stage, (filters, stride) in enumerate((((64, 64, 256), 2), ((128, 128, 512), 1))):
      fs = tuple(f(n) for n in filters)
      x = ResBlock(fs, stride, project=True, max_norm=self.max_norm,
                   dropout=self.block_dropout, bn_momentum=self.bn_momentum)(x, train)
      for _ in range(self.identity_blocks):
        x = ResBlock(fs, 1, max_norm=self.max_norm, bn_momentum=self.bn_momentum)(x, train)
      if stage == 0:
        x = nn.max_pool(x, (2, 2, 2), (2, 2, 2), "SAME")
        x = nn.Dropout(self.d_mid, deterministic=not train)(x)
    x = nn.Dropout(self.d_end, deterministic=not train)(x) if self.d_end > 0 else x
    logits = nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1)).astype(jnp.float32)
    return {"logits": logits, "signal_logit": _signal_logit(logits)}


class Plain3DCNN(nn.Module):
  """A plain 3D CNN baseline: [conv 3³ + swish, max-pool 2] × 3, dense, 4 logits."""
  width: float = 1.0
  hidden: int = 128
  dropout: float = 0.3
  max_norm: float = 4.0
  augment: str = "none"
  exact_only: bool = False

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], train: bool) -> dict[str, jax.Array]:
    x = _input_volume(self, batch, train)
    for i, n in enumerate((16, 32, 64)):
      x = MaxNormConv(max(1, int(round(n * self.width))), padding="VALID" if i == 0 else "SAME",
                      max_norm=self.max_norm)(x)
      x = nn.max_pool(nn.swish(x), (2, 2, 2), (2, 2, 2), "SAME")
    x = nn.swish(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(NUM_CLASSES)(x).astype(jnp.float32)
    return {"logits": logits, "signal_logit": _signal_logit(logits)}


def build(architecture: str, **kwargs: Any) -> nn.Module:
  """The module named ``architecture`` (:data:`ARCHITECTURES`) with its fields."""
  if architecture == "newsnet3d":
    return NewsNet3D(**kwargs)
  if architecture == "plain3d":
    kwargs = {k: v for k, v in kwargs.items()
              if k in ("width", "max_norm", "augment", "exact_only")}
    return Plain3DCNN(**kwargs)
  raise ValueError(f"model.architecture={architecture!r}; known: {ARCHITECTURES}")


def count_parameters(params: Any) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def parameter_count(width: float = 1.0, identity_blocks: int = 3) -> int:
  """Trainable parameters of NEWSnet_3D at the authors' input shape (no compilation)."""
  model = NewsNet3D(width=width, identity_blocks=identity_blocks)
  batch = {"image": jnp.zeros((1, 40, 40, 9), jnp.float32)}
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
  return count_parameters(shapes["params"])
