"""Multi-plane UResNet for per-pixel cosmic / neutrino tagging in SBND.

arXiv 2012.01301, Table 1; reference code ``coreyjadams/CosmicTagger``
(``src/networks/torch/uresnet2D.py`` and its TensorFlow mirror).

Layouts:
  images  float32 [B, P, H, W]            P = 3 wire planes (0, 1 induction; 2 collection),
                                          H drift rows, W wire columns; ADC-like counts.
  inside  [P, B, h, w, C]                 plane-major, channels-last; one plane = one
                                          ordinary NHWC image.
  logits  float32 [B, P, H, W, classes]   classes 0 background, 1 cosmic, 2 neutrino.

Architecture (defaults = the paper's Table 1; F_i = initial_filters · 2^i):
  Block          Conv(k×k, same, bias) → BatchNorm → LeakyReLU.
  ResidualBlock  Block(k) → Conv(k) + BN → + input → LeakyReLU.
  initial        Block(first_kernel, 1 → F_0), per plane.
  down_i         2 ResidualBlock(3×3, F_i) → (skip_i) → MaxPool 2×2 → Block(1×1, F_i → 2F_i).
  deepest        concat the P planes on channels (P·F_depth) → Block(1×1 → 256) →
                 5 ResidualBlock(5×5, 256) → Block(1×1, 256 → P·F_depth) → split.
                 Table 1 rows "Bottleneck", "Deepest", "Bottleneck".
  up_i           bilinear ×2 → Block(1×1, 2F_i → F_i) → + skip_i → 2 ResidualBlock(3×3, F_i).
  final          Conv(1×1, F_0 → classes) with bias (no BN, no activation).

Choices, with the evidence they rest on:
  * **Per-plane BatchNorm statistics.** The reference applies one module instance to each
    plane in turn, so each plane normalises with its own batch statistics and keeps its
    own running averages. Here the per-plane parts (encoder, decoder, and the deepest
    block when ``cross_plane=False``) are wrapped in ``nn.vmap`` over the plane axis with
    ``variable_axes={"params": None, "batch_stats": 0}``: parameters are shared (one copy,
    no plane axis) and every ``batch_stats`` leaf has a leading plane axis of size P.
    Folding the planes into the batch axis would pool the statistics of induction and
    collection planes, whose charge distributions differ (bipolar induction, unipolar
    collection signals); it is not done.
    The cross-plane deepest block sees one concatenated tensor, so its statistics are, as
    in the reference, shared. ``bn_axis_name`` additionally averages every batch statistic
    over a mapped device axis (cross-replica BN, under ``shard_map`` or ``pmap``).
  * **Skip connection.** The paper's text: "each up-sampling layer takes the output of the
    corresponding downward pass, adds it to the output of the previous up-sampling layer,
    and performs two residual blocks". So skip_i = the down blocks' output (before pooling)
    and the sum comes before the up blocks. TensorFlow / 2019 torch add after the up blocks,
    torch master adds the level *input*; parameter counts are the same in all three.
  * **Final layer.** Table 1's Final row (57 = 3·(16 + 3)) needs 16 input channels and BN,
    which no ``coreyjadams/CosmicTagger`` version has. The torch code ends with a plain 1×1
    conv F_0 → 3 with bias (27 parameters; the TensorFlow code adds BN: 33); the torch
    layer is used here. Every other Table 1 row is matched exactly; the total is
    23,839,923 instead of Table 1's 23,839,953 (−30, the Final row only). The first conv
    is 7×7 as in the paper and the 2019 code (torch master: 5×5).
  * **FLOPs.** ``forward_flops`` gives 119.62 GFLOP (2·MAC, convolutions) per event at
    3 × 640 × 1024; ``PAPER_FORWARD_GFLOP`` = 118.9 is the same count with a 5×5 first
    conv (a computed figure: arXiv 2012.01301 prints no FLOP count).
  * **Variants** (Table 2 rows that change the model): ``connections="concat"`` concatenates
    [up, skip] and applies Block(1×1, 2F_i → F_i) (adds F_i(2F_i + 3) per level);
    ``cross_plane=False`` runs the deepest block per plane with shared weights (Block 1×1
    F_depth → 256 … → F_depth); ``upsampling="convolutional"`` replaces interpolation +
    1×1 by ConvTranspose(2×2, stride 2, 2F_i → F_i) + BN + LeakyReLU;
    ``initial_filters`` halves for "filters / 2" (Table 1's counts are for 8; the paper's
    text (§7) says 16 for the baseline and 8 for the variant; which pair is
    run is the experiment config's choice); ``residual=False`` follows the reference's
    ``BlockSeries``: each series of ``blocks_per_level`` residual blocks becomes as many
    plain Blocks (one conv each, so half the convolutions, not just the sums removed).
  * **Initialisation** as the reference: Xavier-uniform conv kernels, zero biases, BN
    scale 1 and bias 0. BN momentum 0.9 (Flax) ≡ torch's 0.1; ε = 1e-5; LeakyReLU 0.01.
  * **dtype**: convolutions, BN outputs and activations in ``dtype`` (e.g. bfloat16);
    parameters, BN statistics and their reductions stay float32; logits are float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax.nn import batch_norm
from recoil_jax.ops import conv as conv_ops
from recoil_jax.ops import pool as pool_ops

CONNECTIONS = ("sum", "concat")
UPSAMPLINGS = ("interpolation", "convolutional")

# Table 1 of arXiv 2012.01301: (row name in ``table1_rows``, parameters as printed).
PAPER_TABLE1: tuple[tuple[str, int], ...] = (
    ("initial", 416),
    ("down_0", 2576), ("down_1", 10016), ("down_2", 39488),
    ("down_3", 156800), ("down_4", 624896), ("down_5", 2494976),
    ("deepest_bottleneck_in", 393984),
    ("deepest_blocks", 16391680),
    ("deepest_bottleneck_out", 397824),
    ("up_5", 2494208), ("up_4", 624512), ("up_3", 156608),
    ("up_2", 39392), ("up_1", 9968), ("up_0", 2552),
    ("final", 57),
)
PAPER_TABLE1_TOTAL = 23_839_953
# Forward GFLOP per event at 3 × 640 × 1024 with a 5×5 first conv (a computed figure;
# arXiv 2012.01301 prints no FLOP count).
PAPER_FORWARD_GFLOP = 118.9


@dataclasses.dataclass(frozen=True)
class _Norm:
  """Settings every Block needs (hashable, so it can be a Flax module field)."""

  train: bool
  leaky_slope: float
  bn_momentum: float
  bn_epsilon: float
  dtype: Any
  bn_axis_name: str | None
  small_map_convs: bool = True
  fused_batch_norm: bool = True


def _conv(features: int, kernel: int, norm: _Norm, name: str) -> nn.Conv:
  # small_map_conv: lax's convolution, minus the taps that can only meet padding, and a patch
  # matmul on maps with few positions (the deepest level); exact, same parameters
  # (recoil_jax/ops/conv.py).
  return nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=True, dtype=norm.dtype,
                 param_dtype=jnp.float32, kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.zeros,
                 conv_general_dilated=conv_ops.small_map_conv if norm.small_map_convs else None,
                 name=name)


def _batch_norm(norm: _Norm, name: str, activate: bool):
  """BatchNorm, then LeakyReLU if ``activate``: [..., C] → [..., C].

  Both forms have the same variables and statistics; the fused one (the default) has a
  closed-form gradient that keeps less for the backward pass (`recoil_jax/nn/batch_norm.py`).
  """
  if norm.fused_batch_norm:
    return batch_norm.BatchNormAct(
        use_running_average=not norm.train, momentum=norm.bn_momentum, epsilon=norm.bn_epsilon,
        activation_slope=norm.leaky_slope if activate else None, dtype=norm.dtype,
        axis_name=norm.bn_axis_name, name=name)
  bn = nn.BatchNorm(use_running_average=not norm.train, momentum=norm.bn_momentum,
                    epsilon=norm.bn_epsilon, dtype=norm.dtype, param_dtype=jnp.float32,
                    axis_name=norm.bn_axis_name, name=name)
  return (lambda x: nn.leaky_relu(bn(x), norm.leaky_slope)) if activate else bn


class Block(nn.Module):
  """Conv(k×k, same, bias) → BatchNorm → LeakyReLU (activation optional). NHWC → NHWC."""

  features: int
  kernel: int
  norm: _Norm
  activate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _conv(self.features, self.kernel, self.norm, "conv")(x)
    return _batch_norm(self.norm, "bn", self.activate)(x)


class ResidualBlock(nn.Module):
  """Block(k) → Conv(k) + BN → + input → LeakyReLU; channels unchanged."""

  kernel: int
  norm: _Norm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    y = Block(features, self.kernel, self.norm, name="block_0")(x)
    y = Block(features, self.kernel, self.norm, activate=False, name="block_1")(y)
    return nn.leaky_relu(y + x, self.norm.leaky_slope)


class BlockSeries(nn.Module):
  """``num_blocks`` ResidualBlocks, or (``residual=False``) as many plain Blocks."""

  num_blocks: int
  kernel: int
  residual: bool
  norm: _Norm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      if self.residual:
        x = ResidualBlock(self.kernel, self.norm, name=f"res_{i}")(x)
      else:
        x = Block(x.shape[-1], self.kernel, self.norm, name=f"plain_{i}")(x)
    return x


def upsample_bilinear_2x(x: jax.Array) -> jax.Array:
  """Bilinear ×2 upsampling of [B, h, w, C] → [B, 2h, 2w, C] with half-pixel centres.

  Identical to ``torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)``
  and to ``jax.image.resize(..., "bilinear")`` (the slow reference in the tests): output
  row 2i is 0.75·x[i] + 0.25·x[i − 1], row 2i + 1 is 0.75·x[i] + 0.25·x[i + 1], edges
  clamped. Written out because ``jax.image.resize`` contracts with dense h × 2h matrices,
  which at 640 × 1024 costs more than the convolutions of a level.
  """

  def along(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)

  return along(along(x, 1), 2).astype(x.dtype)


class DownLevel(nn.Module):
  """Table 1 row "Down i": blocks at F → skip; MaxPool 2×2 → Block(1×1, F → 2F)."""

  num_blocks: int
  residual: bool
  norm: _Norm

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    skip = BlockSeries(self.num_blocks, 3, self.residual, self.norm, name="blocks")(x)
    # = nn.max_pool(skip, (2, 2), strides=(2, 2)), values and gradients; its gradient without
    # XLA's index scatter (recoil_jax/ops/pool.py).
    y = pool_ops.max_pool(skip, 2)
    y = Block(2 * x.shape[-1], 1, self.norm, name="bottleneck")(y)
    return skip, y


class UpLevel(nn.Module):
  """Table 1 row "Up i": upsample 2F → F; connect with skip_i; blocks at F."""

  num_blocks: int
  residual: bool
  connections: str
  upsampling: str
  norm: _Norm

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
    features = skip.shape[-1]
    if self.upsampling == "interpolation":
      x = Block(features, 1, self.norm, name="bottleneck")(upsample_bilinear_2x(x))
    else:  # "convolutional": ConvTranspose 2×2, stride 2 (reference's ConvolutionUpsample).
      x = nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID", use_bias=True,
                           dtype=self.norm.dtype, param_dtype=jnp.float32,
                           kernel_init=nn.initializers.xavier_uniform(),
                           bias_init=nn.initializers.zeros, name="upconv")(x)
      x = _batch_norm(self.norm, "upconv_bn", activate=True)(x)
    if self.connections == "sum":
      x = x + skip
    else:  # "concat": concatenate, then Block(1×1, 2F → F).
      x = Block(features, 1, self.norm, name="connection")(jnp.concatenate([x, skip], -1))
    return BlockSeries(self.num_blocks, 3, self.residual, self.norm, name="blocks")(x)


class Deepest(nn.Module):
  """Block(1×1, C → filters) → blocks (k×k) → Block(1×1, filters → C); [B,h,w,C] → same."""

  filters: int
  num_blocks: int
  kernel: int
  residual: bool
  norm: _Norm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    x = Block(self.filters, 1, self.norm, name="bottleneck_in")(x)
    x = BlockSeries(self.num_blocks, self.kernel, self.residual, self.norm, name="blocks")(x)
    return Block(channels, 1, self.norm, name="bottleneck_out")(x)


class PlaneEncoder(nn.Module):
  """One plane [B, H, W, 1] → (skips per level [B, H/2^i, W/2^i, F_i], bottom)."""

  initial_filters: int
  depth: int
  first_kernel: int
  num_blocks: int
  residual: bool
  norm: _Norm

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
    x = Block(self.initial_filters, self.first_kernel, self.norm, name="initial")(x)
    skips = []
    for i in range(self.depth):
      skip, x = DownLevel(self.num_blocks, self.residual, self.norm, name=f"down_{i}")(x)
      skips.append(skip)
    return tuple(skips), x


class PlaneDecoder(nn.Module):
  """One plane: bottom + skips → logits [B, H, W, classes] in the compute dtype."""

  num_classes: int
  num_blocks: int
  residual: bool
  connections: str
  upsampling: str
  norm: _Norm

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array]) -> jax.Array:
    for i in reversed(range(len(skips))):
      x = UpLevel(self.num_blocks, self.residual, self.connections, self.upsampling,
                  self.norm, name=f"up_{i}")(x, skips[i])
    return _conv(self.num_classes, 1, self.norm, "final")(x)


# Shared weights, one set of BN statistics per plane (leading axis of every batch_stats leaf).
_PER_PLANE = dict(in_axes=0, out_axes=0, variable_axes={"params": None, "batch_stats": 0},
                  split_rngs={"params": False})


class UResNet(nn.Module):
  """The multi-plane UResNet (see the module docstring).

  Attributes:
    num_classes: output classes per pixel (background, cosmic, neutrino).
    initial_filters: F_0, filters of the initial block; F doubles at every level.
    depth: number of down / up levels; H and W must be divisible by 2**depth.
    first_kernel: kernel size of the initial block (7 in the paper).
    blocks_per_level: residual blocks per down and per up level.
    deepest_filters: filters of the deepest block (after the 1×1 squeeze).
    deepest_blocks: residual blocks at the deepest level.
    deepest_kernel: their kernel size.
    connections: "sum" (additive skips) or "concat" (concatenate + 1×1 Block).
    upsampling: "interpolation" (bilinear ×2 + 1×1 Block) or "convolutional"
      (ConvTranspose 2×2, stride 2 + BN + LeakyReLU).
    residual: False replaces every residual block by one plain Block.
    cross_plane: False blocks the cross-plane concatenation ("cross-plane blocked").
    leaky_slope: LeakyReLU negative slope.
    bn_momentum: Flax BN momentum (running = m · running + (1 − m) · batch).
    bn_epsilon: BN ε.
    dtype: compute dtype; parameters and BN statistics stay float32.
    bn_axis_name: if set, batch statistics are averaged over this mapped axis.
    small_map_convs: drop the kernel taps that can only meet SAME padding on maps smaller
      than the kernel, and compute convolutions on maps with few positions as patch matmuls
      (``recoil_jax.ops.conv.small_map_conv``; exact). False: plain ``lax`` convolutions
      (a benchmark baseline).
    fused_batch_norm: BatchNorm (+ LeakyReLU) with a closed-form gradient
      (``recoil_jax.nn.batch_norm``; same variables and statistics as flax's). False:
      ``flax.linen.BatchNorm`` and ``nn.leaky_relu`` differentiated by autodiff (a benchmark
      baseline; equal to float32 rounding).
  """

  num_classes: int = 3
  initial_filters: int = 8
  depth: int = 6
  first_kernel: int = 7
  blocks_per_level: int = 2
  deepest_filters: int = 256
  deepest_blocks: int = 5
  deepest_kernel: int = 5
  connections: str = "sum"
  upsampling: str = "interpolation"
  residual: bool = True
  cross_plane: bool = True
  leaky_slope: float = 0.01
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  small_map_convs: bool = True
  fused_batch_norm: bool = True

  def _check(self, images: jax.Array) -> None:
    if self.connections not in CONNECTIONS:
      raise ValueError(f"UResNet.connections={self.connections!r}; expected one of {CONNECTIONS}")
    if self.upsampling not in UPSAMPLINGS:
      raise ValueError(f"UResNet.upsampling={self.upsampling!r}; expected one of {UPSAMPLINGS}")
    for field in ("num_classes", "initial_filters", "first_kernel", "deepest_filters",
                  "deepest_kernel"):
      if getattr(self, field) < 1:
        raise ValueError(f"UResNet.{field}={getattr(self, field)} must be >= 1")
    for field in ("depth", "blocks_per_level", "deepest_blocks"):
      if getattr(self, field) < 0:
        raise ValueError(f"UResNet.{field}={getattr(self, field)} must be >= 0")
    if images.ndim != 4:
      raise ValueError(f"images must be [batch, planes, height, width]; got shape {images.shape}")
    height, width = images.shape[2:]
    step = 2 ** self.depth
    if height % step or width % step:
      raise ValueError(
          f"images height × width = {height} × {width} must be divisible by "
          f"2**depth = {step} (UResNet.depth={self.depth})")

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Per-pixel logits.

    Args:
      images: float [B, P, H, W] wire-plane images (P = 3 for SBND).
      train: batch statistics (True; needs ``mutable=["batch_stats"]``) or running ones.

    Returns:
      float32 [B, P, H, W, num_classes] logits.
    """
    self._check(images)
    norm = _Norm(train, self.leaky_slope, self.bn_momentum, self.bn_epsilon, self.dtype,
                 self.bn_axis_name, self.small_map_convs, self.fused_batch_norm)
    x = jnp.moveaxis(images, 1, 0)[..., None].astype(self.dtype)  # [P, B, H, W, 1]

    encoder = nn.vmap(PlaneEncoder, **_PER_PLANE)(
        self.initial_filters, self.depth, self.first_kernel, self.blocks_per_level,
        self.residual, norm, name="encoder")
    skips, x = encoder(x)  # x: [P, B, h, w, C]

    deepest_args = (self.deepest_filters, self.deepest_blocks, self.deepest_kernel,
                    self.residual, norm)
    if self.cross_plane:
      p, b, h, w, c = x.shape
      merged = jnp.transpose(x, (1, 2, 3, 0, 4)).reshape(b, h, w, p * c)  # plane-major
      merged = Deepest(*deepest_args, name="deepest")(merged)
      x = jnp.transpose(merged.reshape(b, h, w, p, c), (3, 0, 1, 2, 4))
    else:
      x = nn.vmap(Deepest, **_PER_PLANE)(*deepest_args, name="deepest")(x)

    decoder = nn.vmap(PlaneDecoder, **_PER_PLANE)(
        self.num_classes, self.blocks_per_level, self.residual, self.connections,
        self.upsampling, norm, name="decoder")
    logits = decoder(x, skips)  # [P, B, H, W, classes]
    return jnp.moveaxis(logits, 0, 1).astype(jnp.float32)


# --- bookkeeping: Table 1 rows, analytic parameter and FLOP counts -----------------------


def conv_parameter_count(kernel: int, c_in: int, c_out: int) -> int:
  """Table 1's rule per conv: weights + bias + BN γ, β = c_out · (k² · c_in + 3)."""
  return c_out * (kernel * kernel * c_in + 3)


def _size(tree: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def table1_rows(params: Any) -> list[tuple[str, int]]:
  """Trainable parameters of a ``UResNet`` grouped as the rows of Table 1, in its order.

  Args:
    params: the ``"params"`` collection of an initialised ``UResNet``.

  Returns:
    [(row, count)]: "initial", "down_0" …, "deepest_bottleneck_in", "deepest_blocks",
    "deepest_bottleneck_out", "up_{depth-1}" … "up_0", "final" (names of ``PAPER_TABLE1``).
  """
  enc, deep, dec = params["encoder"], params["deepest"], params["decoder"]
  depth = sum(k.startswith("down_") for k in enc)
  rows = [("initial", _size(enc["initial"]))]
  rows += [(f"down_{i}", _size(enc[f"down_{i}"])) for i in range(depth)]
  rows += [("deepest_bottleneck_in", _size(deep["bottleneck_in"])),
           ("deepest_blocks", _size(deep.get("blocks", {}))),
           ("deepest_bottleneck_out", _size(deep["bottleneck_out"]))]
  rows += [(f"up_{i}", _size(dec[f"up_{i}"])) for i in reversed(range(depth))]
  rows += [("final", _size(dec["final"]))]
  if sum(n for _, n in rows) != _size(params):
    raise ValueError("table1_rows: parameters outside the known rows; not a UResNet tree?")
  return rows


def forward_flops(model: UResNet, height: int, width: int, planes: int = 3) -> dict[str, float]:
  """Analytic forward FLOPs of one event, convolutions only (2 · multiply-adds).

  Counted like ``PAPER_FORWARD_GFLOP`` (118.9 GFLOP, a computed figure; arXiv 2012.01301
  prints none): every conv and transposed conv;
  biases, BatchNorm, activations, pooling and interpolation are left out (they scale as
  pixels · channels, not pixels · channels², and XLA's ``cost_analysis`` counts them).

  Args:
    model: the configuration (no parameters needed).
    height: image rows per plane (pixels).
    width: image columns per plane (pixels).
    planes: wire planes per event.

  Returns:
    {"<row>": FLOP per Table 1 row (names of ``PAPER_TABLE1``), "total": their sum}.
  """
  def conv(k, c_in, c_out, pixels, copies=planes):
    return 2.0 * k * k * c_in * c_out * pixels * copies

  series = model.blocks_per_level * (2 if model.residual else 1)  # convs per BlockSeries
  f0, n0 = model.initial_filters, height * width
  out: dict[str, float] = {"initial": conv(model.first_kernel, 1, f0, n0)}
  for i in range(model.depth):
    f, n = f0 * 2 ** i, n0 / 4 ** i
    out[f"down_{i}"] = series * conv(3, f, f, n) + conv(1, f, 2 * f, n / 4)
  fd, nd, fdeep = f0 * 2 ** model.depth, n0 / 4 ** model.depth, model.deepest_filters
  # Cross-plane: one tensor of planes·F channels; blocked: ``planes`` tensors of F channels.
  c_in, copies = (planes * fd, 1) if model.cross_plane else (fd, planes)
  deep_series = model.deepest_blocks * (2 if model.residual else 1)
  out["deepest_bottleneck_in"] = conv(1, c_in, fdeep, nd, copies)
  out["deepest_blocks"] = deep_series * conv(model.deepest_kernel, fdeep, fdeep, nd, copies)
  out["deepest_bottleneck_out"] = conv(1, fdeep, c_in, nd, copies)
  for i in reversed(range(model.depth)):
    f, n = f0 * 2 ** i, n0 / 4 ** i
    # Interpolation: 1×1 conv 2F → F at the output size. ConvTranspose 2×2 stride 2: every
    # output pixel receives exactly one tap of 2F inputs, the same count.
    up = conv(1, 2 * f, f, n)
    if model.connections == "concat":
      up += conv(1, 2 * f, f, n)
    out[f"up_{i}"] = up + series * conv(3, f, f, n)
  out["final"] = conv(1, f0, model.num_classes, n0)
  out["total"] = sum(out.values())
  return out


def expected_parameter_count(model: Mapping[str, Any], num_classes: int = 3,
                             planes: int = 3) -> int:
  """Trainable parameters of a UResNet config by the rule of Table 1 (arXiv 2012.01301).

  Every conv counts ``c_out·(k²·c_in + 3)`` (weights, bias, BN γ and β), except the final
  plain 1×1 conv ``num_classes·(F₀ + 1)``; transposed-conv upsampling 2×2 is
  ``F·(4·2F + 3)``; concat skips add a 1×1 conv ``F·(2F + 3)`` per level; non-residual
  series have one conv per block instead of two. An independent check of the model.

  Args:
    model: ``config.model`` (fields as in configs/sbnd.py).
  """
  p = conv_parameter_count
  f0, depth = model["initial_filters"], model["depth"]
  convs = model["blocks_per_level"] * (2 if model["residual"] else 1)
  total = p(model["first_kernel"], 1, f0)
  for i in range(depth):
    f = f0 * 2 ** i
    total += convs * p(3, f, f) + p(1, f, 2 * f)  # down: blocks, bottleneck F -> 2F
    up = f * (4 * 2 * f + 3) if model["upsampling"] == "convolutional" else p(1, 2 * f, f)
    if model["connections"] == "concat":
      up += p(1, 2 * f, f)
    total += up + convs * p(3, f, f)
  fd, deep = f0 * 2 ** depth, model["deepest_filters"]
  c_in = planes * fd if model["cross_plane"] else fd
  deep_convs = model["deepest_blocks"] * (2 if model["residual"] else 1)
  total += p(1, c_in, deep) + deep_convs * p(model["deepest_kernel"], deep, deep)
  total += p(1, deep, c_in)
  return total + num_classes * (f0 + 1)


def parameter_count(variables: Mapping[str, Any]) -> int:
  """Trainable parameters (the ``params`` collection) of initialised variables or shapes."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"])))


def abstract_variables(model: nn.Module, height: int, width: int, batch: int = 1
                       ) -> Mapping[str, Any]:
  """Shapes of the model's variables (``jax.eval_shape``; nothing computed)."""
  example = {"image": jax.ShapeDtypeStruct((batch, 3, height, width), jnp.float32),
             "label": jax.ShapeDtypeStruct((batch, 3, height, width), jnp.int32)}
  return jax.eval_shape(lambda ex: model.init(jax.random.PRNGKey(0), ex, train=False), example)

