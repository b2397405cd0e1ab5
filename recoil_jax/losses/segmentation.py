"""Per-pixel segmentation losses for multi-plane wire images (SBND cosmic tagging).

Source study: arXiv 2012.01301 (loss weighting in its §7).

Layouts (the SBND interfaces; class codes as in ``coreyjadams/CosmicTagger``'s files):

* ``logits``: float ``[B, P, H, W, C]`` (event, plane, drift row, wire column, class);
  computed in float32 whatever the model's compute dtype.
* ``labels``: integer ``[B, P, H, W]`` in ``[0, C)``: 0 background, 1 cosmic, 2 neutrino.

Every loss is per-pixel cross entropy ``CE = −log softmax(logits)[label]`` times a
per-pixel weight ``w``, reduced to one value per event ``[B]``; :func:`loss_terms` turns
that into the trainer's ``(sum, count)`` pair (padded events, ``mask = 0``, contribute
nothing to either).

Balance schemes (``balance``; CosmicTagger ``LossCalculator`` names in brackets):

* ``"light"`` [light]: ``w = class_weights[label]``, default 1 / 1.5 / 10 (the paper's
  baseline).
* ``"full"`` [even]: ``w = (1/3) / (n_c + 1)`` with ``n_c`` the number of pixels of the
  label's class in that image and plane, so every class carries about the same total
  weight (the paper's "full balance"). Counts are treated as constants (no gradient).
* ``"none"``: ``w = 1``.
* ``"focal"``: focal loss (Lin et al. 2017, the paper's future work),
  ``(1 − p_label)^γ · CE`` with γ = ``focal_gamma`` (default 2) and the gradient through
  the modulating factor (CosmicTagger's variant detaches it); always a plain mean over
  the pixels of a plane (a weighted mean would undo the down-weighting).

Normalisation (``normalisation``) for light / full / none:

* ``"plane_weighted_mean"`` (the code's, default): per plane ``Σ w·CE / Σ w`` over its
  H×W pixels, summed over the planes.
* ``"pixel_mean"`` (the paper's text, "averaged over all pixels in all three planes"):
  ``Σ w·CE / (P·H·W)`` over all pixels of all planes.

Both are per *event*; CosmicTagger normalises per plane over the whole minibatch, which
makes an event's weight depend on the rest of its batch (and on how the batch is
sharded). Per event, the global mean over events is exact under padding and sharding.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

BALANCES = ("light", "full", "none", "focal")
NORMALISATIONS = ("plane_weighted_mean", "pixel_mean")
PAPER_CLASS_WEIGHTS = (1.0, 1.5, 10.0)  # background, cosmic, neutrino (arXiv 2012.01301 §7).


def _check(logits: jax.Array, labels: jax.Array) -> None:
  if logits.ndim != 5:
    raise ValueError(f"logits must be [B, P, H, W, C], got shape {logits.shape}")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels shape {labels.shape} must be logits shape without the class "
                     f"axis, {logits.shape[:-1]}")


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-pixel cross entropy ``−log softmax(logits)[label]``, ``[B, P, H, W]`` (≥ float32)."""
  _check(logits, labels)
  # At least float32 (bf16 logits would lose the small probabilities); float64 stays.
  log_p = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)),
                             axis=-1)
  # A one-hot contraction rather than take_along_axis: its gradient is a multiply, not a
  # scatter-add (slow on CPU).
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=log_p.dtype)
  return -jnp.sum(onehot * log_p, axis=-1)


def pixel_weights(labels: jax.Array, *, balance: str, num_classes: int = 3,
                  class_weights: Sequence[float] = PAPER_CLASS_WEIGHTS) -> jax.Array:
  """Per-pixel loss weights ``[B, P, H, W]`` float32 for ``light``, ``full`` or ``none``.

  Args:
    labels: integer ``[B, P, H, W]``.
    balance: "light", "full" or "none" (focal weights depend on the logits; see
      :func:`segmentation_loss`).
    num_classes: C.
    class_weights: C weights for "light".
  """
  labels = labels.astype(jnp.int32)
  if balance == "light":
    if len(class_weights) != num_classes:
      raise ValueError(f"class_weights {tuple(class_weights)} must have num_classes="
                       f"{num_classes} entries")
    return jnp.asarray(class_weights, jnp.float32)[labels]
  if balance == "full":
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [B, P, H, W, C]
    counts = jnp.sum(onehot, axis=(2, 3))  # [B, P, C] pixels per class per image and plane.
    per_class = (1.0 / num_classes) / (counts + 1.0)
    return jnp.einsum("bphwc,bpc->bphw", onehot, per_class)
  if balance == "none":
    return jnp.ones(labels.shape, jnp.float32)
  raise ValueError(f"balance={balance!r} has no fixed pixel weights; known: "
                   f"'light', 'full', 'none' (and 'focal' in segmentation_loss)")


def segmentation_loss(logits: jax.Array, labels: jax.Array, *, balance: str = "light",
                      normalisation: str = "plane_weighted_mean",
                      class_weights: Sequence[float] = PAPER_CLASS_WEIGHTS,
                      focal_gamma: float = 2.0) -> jax.Array:
  """Per-event weighted cross entropy (see the module docstring), float32 ``[B]``.

  Args:
    logits: ``[B, P, H, W, C]``.
    labels: integer ``[B, P, H, W]``.
    balance: one of ``BALANCES``.
    normalisation: one of ``NORMALISATIONS`` (ignored by "focal").
    class_weights: per-class weights of "light".
    focal_gamma: γ of "focal" (≥ 0; 0 gives plain cross entropy).

  Returns:
    ``[B]`` loss per event (summed over planes for "plane_weighted_mean" and "focal"),
    float32 (float64 for float64 logits).
  """
  if balance not in BALANCES:
    raise ValueError(f"loss balance={balance!r}; known: {BALANCES}")
  if normalisation not in NORMALISATIONS:
    raise ValueError(f"loss normalisation={normalisation!r}; known: {NORMALISATIONS}")
  ce = pixel_cross_entropy(logits, labels)
  if balance == "focal":
    if focal_gamma < 0:
      raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
    # 1 − p = −expm1(−CE): accurate when p → 1, where the factor matters most.
    modulation = (-jnp.expm1(-ce)) ** focal_gamma
    return jnp.sum(jnp.mean(modulation * ce, axis=(2, 3)), axis=1)
  w = jax.lax.stop_gradient(pixel_weights(labels, balance=balance,
                                          num_classes=logits.shape[-1],
                                          class_weights=class_weights)).astype(ce.dtype)
  if normalisation == "plane_weighted_mean":
    return jnp.sum(jnp.sum(w * ce, axis=(2, 3)) / jnp.sum(w, axis=(2, 3)), axis=1)
  return jnp.mean(w * ce, axis=(1, 2, 3))


def loss_terms(per_event_loss: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(Σ mask·loss, Σ mask)`` float32: the trainer's exact mean over real events."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_event_loss.astype(jnp.float32) * mask), jnp.sum(mask)
