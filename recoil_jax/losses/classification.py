"""Classification losses as exact ``(sum, count)`` terms: binary and multi-class.

Every function returns per-example values ``[B]`` or the trainer's ``{name: (sum, count)}``
terms (``recoil_jax.tasks``); padded examples (``mask = 0``) add nothing to either. Logits
are computed in float32 whatever the model's compute dtype.

Conventions: a binary classifier outputs one logit per example, ``logit = log p/(1 − p)``
with ``p`` the probability of the *signal* class (label 1); a multi-class one outputs
``[B, C]`` logits and integer labels in ``[0, C)``.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def binary_cross_entropy(logits: jax.Array, labels: jax.Array,
                         pos_weight: float = 1.0) -> jax.Array:
  """Per-example ``−w·y log σ(z) − (1 − y) log(1 − σ(z))``, stable for any logit ``z``.

  Args:
    logits: float [B] (or [B, 1]).
    labels: {0, 1} [B] (any dtype; 1 = signal).
    pos_weight: weight ``w`` of the signal term (class balance).

  Returns:
    float32 [B].
  """
  z = jnp.reshape(logits, (logits.shape[0],)).astype(jnp.float32)
  y = jnp.reshape(labels, (labels.shape[0],)).astype(jnp.float32)
  # −log σ(z) = softplus(−z), −log(1 − σ(z)) = softplus(z): no overflow for large |z|.
  return pos_weight * y * jax.nn.softplus(-z) + (1.0 - y) * jax.nn.softplus(z)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example ``−log softmax(logits)[label]``; logits [B, C], integer labels [B] -> [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]


def binary_terms(logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
                 pos_weight: float = 1.0) -> dict[str, tuple[jax.Array, jax.Array]]:
  """``loss`` (binary cross entropy), ``accuracy`` (threshold 0.5) and per-class accuracy.

  ``signal_accuracy`` / ``background_accuracy`` are the fractions of signal (label 1) and
  background (label 0) examples classified correctly, each over its own class count.
  """
  z = jnp.reshape(logits, (logits.shape[0],)).astype(jnp.float32)
  y = jnp.reshape(labels, (labels.shape[0],)).astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  count = jnp.sum(mask)
  correct = ((z > 0).astype(jnp.float32) == y).astype(jnp.float32) * mask
  return {
      "loss": (jnp.sum(binary_cross_entropy(z, y, pos_weight) * mask), count),
      "accuracy": (jnp.sum(correct), count),
      "signal_accuracy": (jnp.sum(correct * y), jnp.sum(mask * y)),
      "background_accuracy": (jnp.sum(correct * (1 - y)), jnp.sum(mask * (1 - y))),
  }


def multiclass_terms(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                     class_weights: jax.Array | None = None
                     ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """``loss`` (weighted softmax cross entropy, normalised by the summed weights) and
  ``accuracy`` (argmax) as (sum, count) terms; ``class_weights`` [C] (default all 1)."""
  mask = mask.astype(jnp.float32)
  w = mask if class_weights is None else mask * jnp.asarray(class_weights)[labels]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * mask
  return {"loss": (jnp.sum(softmax_cross_entropy(logits, labels) * w), jnp.sum(w)),
          "accuracy": (jnp.sum(correct), jnp.sum(mask))}


def merge_terms(*terms: Mapping[str, tuple[jax.Array, jax.Array]], prefixes=None
                ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Several term dicts in one; ``prefixes`` (one per dict, e.g. ``("", "aux/")``) keep
  their names apart. The first dict's ``loss`` stays ``loss`` unless prefixed."""
  prefixes = prefixes or ("",) * len(terms)
  out: dict[str, tuple[jax.Array, jax.Array]] = {}
  for prefix, t in zip(prefixes, terms):
    for k, v in t.items():
      name = prefix + k
      if name in out:
        raise KeyError(f"merge_terms: term {name!r} given twice; pass prefixes")
      out[name] = v
  return out
