"""shard_map's varying-axis types, for custom VJPs and kernels that must keep them right.

Inside ``jax.shard_map`` (``check_vma=True``, the trainer's data-parallel step) every value is
typed by the mesh axes it varies over. JAX's own autodiff keeps these types consistent; a custom
VJP has to do it by hand.
"""

from __future__ import annotations

import jax


def varying_axes(x) -> frozenset:
  """The mesh axes ``x`` varies over inside shard_map (empty outside it)."""
  mat = getattr(jax.typeof(x), "manual_axis_type", None)
  return frozenset(mat.varying) if mat is not None else frozenset()


def match_varying(cotangent: jax.Array, primal: jax.Array) -> jax.Array:
  """Gives a custom VJP's cotangent the primal's shard_map type.

  Inside ``shard_map`` an invariant (replicated) primal used with varying operands is implicitly
  broadcast (pvary); the transpose of that broadcast is a sum over the extra axes, as JAX's own
  autodiff does. Outside shard_map this is the identity.
  """
  extra = tuple(sorted(varying_axes(cotangent) - varying_axes(primal)))
  return jax.lax.psum(cotangent, extra) if extra else cotangent
