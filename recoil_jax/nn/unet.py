"""2-D UNet, residual UNet and attention-residual UNet (Flax Linen), channels-last.

Shared by the studies that segment camera or wire-plane images pixel by pixel (CYGNO's
track / noise segmentation; reusable by NEWSdm and others). Layouts:

  images  [B, H, W, C_in]      any float dtype; H and W divisible by 2^depth.
  logits  [B, H, W, classes]   float32 per-pixel logits (no softmax).

Architecture (``filters = (F_0, …, F_D)``, depth D = len(filters) − 1):

  encoder i = 0 … D−1   block(→ F_i) → skip_i → MaxPool 2×2
  bottom                block(→ F_D)
  decoder i = D−1 … 0   up = ConvTranspose(2×2, stride 2, F_{i+1} → F_i, bias)
                        s = skip_i, or AttentionGate(x = skip_i, g = the coarser decoder
                        feature before the up-convolution) when ``attention``
                        block(concat[up, s] (2 F_i) → F_i)
  head                  Conv(1×1, F_0 → classes, bias)

Blocks (every convolution 3×3 "same" without bias, followed by BatchNorm, whose shift
replaces the bias; BN statistics in the ``batch_stats`` collection):

* ``"plain"`` (UNet, arXiv 1505.04597): ConvBN → ReLU → ConvBN → ReLU. The original uses
  unpadded convolutions and no BN; "same" padding keeps the output on the input grid.
* ``"residual"`` (ResUNet, arXiv 1711.10684): ReLU(ConvBN(ReLU(ConvBN(x))) + shortcut),
  shortcut = x when the channels match, else Conv 1×1 (no bias) + BN. This is the
  post-activation residual unit inside the same pooling / up-convolution frame as the
  UNet (ResUNet itself uses pre-activation units and strided convolutions), so that the
  three networks differ only by their block and the gate.

Attention gate (arXiv 1804.03999, additive, grid-attention form), for a skip x_l
[B, H, W, F_x] and a gating signal g [B, H/s, W/s, F_g]:

  q = ψᵀ ReLU(W_xᵀ x_l + W_gᵀ g + b_g) + b_ψ,   α = sigmoid(q)  [B, H/s, W/s, 1]
  output = resample(α → H × W) · x_l

W_x is an s×s convolution with stride s and no bias (the paper's strided 1×1 projection
onto g's grid; s = 1 gives a 1×1 conv), W_g a 1×1 conv with bias b_g, ψ a 1×1 conv to one
channel with bias b_ψ; F_int = max(1, F_x // 2) intermediate channels (the paper's code);
α is resampled by bilinear interpolation (half-pixel centres, ``jax.image.resize``). No BN
in the gate (some re-implementations add one), so the gate is exactly the formula above.

Initialisation: Flax defaults (LeCun-normal kernels, zero biases, BN scale 1 / shift 0).
Parameters are float32; ``dtype`` sets the compute dtype of convolutions and BN outputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

KINDS = ("unet", "resunet", "attresunet")
BLOCKS = ("plain", "residual")


def unet_options(kind: str) -> dict[str, Any]:
  """``{"block": ..., "attention": ...}`` of a named network (one of ``KINDS``)."""
  table = {"unet": dict(block="plain", attention=False),
           "resunet": dict(block="residual", attention=False),
           "attresunet": dict(block="residual", attention=True)}
  if kind not in table:
    raise ValueError(f"UNet kind {kind!r}; known: {KINDS}")
  return table[kind]


class ConvBN(nn.Module):
  """Conv(k×k, same, no bias) → BatchNorm (→ ReLU if ``activate``). [B,H,W,C] → [B,H,W,F]."""

  features: int
  kernel: int = 3
  activate: bool = True
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32, name="bn")(x)
    return nn.relu(x) if self.activate else x


class PlainBlock(nn.Module):
  """UNet double convolution: ConvBN → ReLU → ConvBN → ReLU, → ``features`` channels."""

  features: int
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(bn_momentum=self.bn_momentum, dtype=self.dtype)
    x = ConvBN(self.features, name="conv_0", **kw)(x, train)
    return ConvBN(self.features, name="conv_1", **kw)(x, train)


class ResidualBlock(nn.Module):
  """ReLU(ConvBN(ReLU(ConvBN(x))) + shortcut); shortcut 1×1 ConvBN when channels change."""

  features: int
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(bn_momentum=self.bn_momentum, dtype=self.dtype)
    y = ConvBN(self.features, name="conv_0", **kw)(x, train)
    y = ConvBN(self.features, activate=False, name="conv_1", **kw)(y, train)
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = ConvBN(self.features, kernel=1, activate=False, name="shortcut", **kw)(
          x, train)
    return nn.relu(y + shortcut)


class AttentionGate(nn.Module):
  """Additive attention gate of arXiv 1804.03999 (module docstring): α · x, and α.

  Call: ``gate(x, g) -> (gated x [B, H, W, F_x], alpha [B, H, W, 1] float32)`` with
  ``x`` [B, H, W, F_x] and ``g`` [B, H/s, W/s, F_g] for an integer s ≥ 1.
  """

  inter_features: int | None = None  # F_int; None = max(1, F_x // 2).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    h, w = x.shape[1:3]
    gh, gw = g.shape[1:3]
    if h % gh or w % gw or h // gh != w // gw:
      raise ValueError(f"AttentionGate: x grid {h}x{w} is not an integer multiple s of "
                       f"the gating grid {gh}x{gw} (same s on both axes)")
    s = h // gh
    f_int = self.inter_features or max(1, x.shape[-1] // 2)
    conv = dict(dtype=self.dtype, param_dtype=jnp.float32)
    theta_x = nn.Conv(f_int, (s, s), strides=(s, s), padding="VALID", use_bias=False,
                      name="w_x", **conv)(x)
    phi_g = nn.Conv(f_int, (1, 1), use_bias=True, name="w_g", **conv)(g)  # Bias = b_g.
    q = nn.Conv(1, (1, 1), use_bias=True, name="psi", **conv)(nn.relu(theta_x + phi_g))
    alpha = jax.nn.sigmoid(q.astype(jnp.float32))
    if s > 1:
      alpha = jax.image.resize(alpha, (alpha.shape[0], h, w, 1), method="bilinear")
    return x * alpha.astype(x.dtype), alpha


class UNet(nn.Module):
  """2-D UNet / ResUNet / attention-ResUNet (module docstring) returning per-pixel logits.

  Attributes:
    num_classes: output channels (logits per pixel).
    filters: (F_0, …, F_D); depth D = len(filters) − 1 ≥ 1 poolings.
    block: "plain" (UNet) or "residual" (ResUNet).
    attention: attention gates on the skip connections (with ``block="residual"``: the
      attention-residual UNet).
    bn_momentum: BatchNorm running-average momentum (Flax convention: 0.9 ≡ torch 0.1).
    dtype: compute dtype; parameters and logits stay float32.
  """

  num_classes: int = 2
  filters: Sequence[int] = (16, 32, 64, 128)
  block: str = "plain"
  attention: bool = False
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  def _block(self, features: int, name: str) -> nn.Module:
    if self.block not in BLOCKS:
      raise ValueError(f"UNet.block={self.block!r}; known: {BLOCKS}")
    cls = PlainBlock if self.block == "plain" else ResidualBlock
    return cls(features, bn_momentum=self.bn_momentum, dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, *, return_attention: bool = False
               ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
    """``images`` [B, H, W, C_in] → logits [B, H, W, num_classes] float32.

    With ``return_attention`` also the gates' α maps (finest level first, each
    [B, H_i, W_i, 1]; empty without attention).
    """
    filters = tuple(int(f) for f in self.filters)
    depth = len(filters) - 1
    if depth < 1:
      raise ValueError(f"UNet.filters={filters}: need at least 2 levels")
    if images.ndim != 4:
      raise ValueError(f"UNet: images must be [B, H, W, C], got shape {images.shape}")
    h, w = images.shape[1:3]
    if h % 2**depth or w % 2**depth:
      raise ValueError(f"UNet: image {h}x{w} must be divisible by 2^depth = {2**depth} "
                       f"(filters={filters})")
    x = images.astype(self.dtype)
    skips = []
    for i in range(depth):
      x = self._block(filters[i], f"down_{i}")(x, train)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = self._block(filters[depth], "bottom")(x, train)
    alphas = []
    for i in reversed(range(depth)):
      up = nn.ConvTranspose(filters[i], (2, 2), strides=(2, 2), padding="VALID",
                            use_bias=True, dtype=self.dtype, param_dtype=jnp.float32,
                            name=f"upconv_{i}")(x)
      skip = skips[i]
      if self.attention:
        skip, alpha = AttentionGate(dtype=self.dtype, name=f"gate_{i}")(skip, x)
        alphas.insert(0, alpha)
      x = self._block(filters[i], f"up_{i}")(jnp.concatenate([up, skip], axis=-1), train)
    logits = nn.Conv(self.num_classes, (1, 1), use_bias=True, dtype=self.dtype,
                     param_dtype=jnp.float32, name="head")(x).astype(jnp.float32)
    return (logits, alphas) if return_attention else logits


def make_unet(kind: str, *, num_classes: int, filters: Sequence[int],
              bn_momentum: float = 0.9, dtype: Any = jnp.float32) -> UNet:
  """The network named ``kind`` ("unet", "resunet", "attresunet")."""
  return UNet(num_classes=num_classes, filters=tuple(filters), bn_momentum=bn_momentum,
              dtype=dtype, **unet_options(kind))
