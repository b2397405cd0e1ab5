"""Backend selection for the sparse ops: the XLA reference or the Pallas kernels, same results.

``backend``:

* ``"xla"``: `recoil_jax.ops.sparse.reference` (sort/grid kernel maps, XLA gathers); runs anywhere.
* ``"pallas"``: hash-table rulebooks (`rulebook`) and output-stationary kernels (`conv`, `maxpool`)
  compiled by the Pallas Triton backend; needs a GPU, or ``interpret=True`` (the Pallas interpreter,
  slow, for tests on CPU).
* ``"auto"``: the innermost `use_backend` block if there is one, else ``"pallas"`` on a GPU and
  ``"xla"`` elsewhere. On a GPU, the first such resolution runs a small Pallas-vs-XLA self-check
  (`selfcheck`; once per device kind and process, outside any trace); if it fails or raises, one
  warning is logged and ``"auto"`` means ``"xla"`` from then on. ``RECOIL_JAX_PALLAS_SELFCHECK=0``
  skips the check; `selfcheck.pallas_status` returns its result. Explicit ``"pallas"`` requests are
  never changed.

The choice is made when a function is traced: a jitted function keeps the backend it was traced
with. Both backends produce identical rulebooks and output sites; features agree to float rounding
(different summation order).

The Pallas modules are imported only when the Pallas backend is used, so the XLA path never loads
``jax.experimental.pallas``. Inside ``jax.shard_map`` (the trainer's data-parallel step) the Pallas
ops lower for the GPU (see `common.call`); the *interpreter* cannot run there with
``check_vma=True`` (a JAX interpret-mode limitation: its scan over the grid mixes typed and untyped
values), so CPU tests call the ops outside shard_map.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp

from recoil_jax.ops.sparse import kernel_map as km
from recoil_jax.ops.sparse import reference
from recoil_jax.ops.sparse.tensor import SparseTensor

BACKENDS = ("auto", "xla", "pallas")
_STATE = threading.local()


def on_gpu() -> bool:
  """True when JAX's default backend is a GPU."""
  return jax.default_backend() == "gpu"


@contextlib.contextmanager
def use_backend(backend: str, interpret: bool = False) -> Iterator[None]:
  """Makes ``backend="auto"`` resolve to ``backend`` (and ``interpret``) inside the block.

  Used to switch a whole model (whose layers keep the default ``"auto"``) between implementations,
  e.g. ``with use_backend("pallas", interpret=True): model.apply(...)`` in CPU tests. Read at trace
  time: wrap the first call of a jitted function, not later ones.
  """
  if backend not in ("xla", "pallas"):
    raise ValueError(f"use_backend: backend must be 'xla' or 'pallas', got {backend!r}")
  stack = getattr(_STATE, "stack", [])
  _STATE.stack = stack + [(backend, bool(interpret))]
  try:
    yield
  finally:
    _STATE.stack = stack


def resolve_backend(backend: str, interpret: bool = False,
                    where: str = "sparse op") -> tuple[str, bool]:
  """("xla" | "pallas", interpret) for a requested backend; clear errors for impossible requests."""
  if backend not in BACKENDS:
    raise ValueError(f"{where}: backend {backend!r} is not available; implemented backends: "
                     f"{BACKENDS}")
  explicit = backend == "pallas"
  if backend == "auto":
    stack = getattr(_STATE, "stack", [])
    if stack:
      backend, forced = stack[-1]
      interpret = interpret or forced
      explicit = backend == "pallas"
    else:
      backend = "pallas" if on_gpu() and _selfcheck().auto_may_use_pallas() else "xla"
  if explicit and on_gpu():
    _selfcheck().note_explicit_pallas(where)
  if backend == "pallas" and not interpret and not on_gpu():
    raise ValueError(
        f"{where}: backend='pallas' compiles Triton kernels and needs a GPU, but JAX's default "
        f"backend is {jax.default_backend()!r}; use backend='xla' or 'auto' here, or "
        "interpret=True (the slow Pallas interpreter, for tests)")
  return backend, bool(interpret)


def _selfcheck():
  from recoil_jax.ops.sparse.pallas import selfcheck  # pylint: disable=g-import-not-at-top
  return selfcheck


# ---------------------------------------------------------------------------------------------------
# Shared helpers (kernel checks, overflow errors and bias/padding come from the XLA path).

def _reference_kwargs(method: str, compute: str | None, max_chunk_elements: int | None) -> dict:
  kwargs = {"method": method}
  if compute is not None:
    kwargs["compute"] = compute
  if max_chunk_elements is not None:
    kwargs["max_chunk_elements"] = max_chunk_elements
  return kwargs


# ---------------------------------------------------------------------------------------------------
# Ops.

def sparse_conv(st: SparseTensor, kernel: jax.Array, bias: jax.Array | None = None, *,
                strides: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                dilation: int | Sequence[int] = 1, out_capacity: int | None = None,
                method: str = "auto", compute: str = "auto",
                max_chunk_elements: int | None = None, backend: str = "auto",
                interpret: bool = False, where: str = "sparse_conv") -> SparseTensor:
  """Regular sparse 3D convolution (spconv ``SparseConv3d``) on the chosen backend.

  Arguments as `reference.sparse_conv`, plus ``backend`` and ``interpret`` (see module docstring).
  ``method``, ``compute`` and ``max_chunk_elements`` tune the XLA path only.
  """
  name, interp = resolve_backend(backend, interpret, where)
  if name == "xla":
    return reference.sparse_conv(st, kernel, bias, strides=strides, padding=padding,
                                 dilation=dilation, out_capacity=out_capacity, where=where,
                                 **_reference_kwargs(method, compute, max_chunk_elements))
  from recoil_jax.ops.sparse.pallas import conv, rulebook
  reference.check_kernel(st, kernel, where)
  ks = tuple(kernel.shape[:3])
  ss, ps, ds = km.triple(strides, "strides"), km.triple(padding, "padding"), km.triple(dilation, "dilation")
  out_shape = km.conv_output_shape(st.spatial_shape, ks, ss, ps, ds)
  if out_capacity is None:
    out_capacity = km.default_out_capacity(st.capacity, st.batch_size, out_shape, ks, ss, ds)
  kmap = rulebook.build_conv_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, ps, ds,
                                 out_capacity, build_in_map=True, interpret=interp)
  reference.raise_on_overflow(kmap, out_capacity, where)
  flat = kernel.reshape((-1,) + kernel.shape[3:])
  out = conv.conv_features(st.features, flat, kmap.out_map, kmap.in_map, interp)
  return SparseTensor(coords=kmap.out_coords, features=reference.finish_features(out, bias, kmap.out_coords),
                      spatial_shape=out_shape, batch_size=st.batch_size,
                      overflow=st.overflow + kmap.overflow)


def subm_conv(st: SparseTensor, kernel: jax.Array, bias: jax.Array | None = None, *,
              dilation: int | Sequence[int] = 1, method: str = "auto", compute: str = "auto",
              max_chunk_elements: int | None = None, backend: str = "auto",
              interpret: bool = False, where: str = "subm_conv") -> SparseTensor:
  """Submanifold sparse 3D convolution (spconv ``SubMConv3d``) on the chosen backend."""
  name, interp = resolve_backend(backend, interpret, where)
  if name == "xla":
    return reference.subm_conv(st, kernel, bias, dilation=dilation, where=where,
                               **_reference_kwargs(method, compute, max_chunk_elements))
  from recoil_jax.ops.sparse.pallas import conv, rulebook
  reference.check_kernel(st, kernel, where)
  ks = tuple(kernel.shape[:3])
  if any(k % 2 == 0 for k in ks):
    raise ValueError(f"{where}: submanifold convolution needs odd kernel sizes, got {ks}")
  kmap = rulebook.build_subm_map(st.coords, st.spatial_shape, st.batch_size, ks,
                                 km.triple(dilation, "dilation"), interpret=interp)
  flat = kernel.reshape((-1,) + kernel.shape[3:])
  out = conv.conv_features(st.features, flat, kmap.out_map, kmap.in_map, interp)
  return st.replace(features=reference.finish_features(out, bias, st.coords))


def sparse_max_pool(st: SparseTensor, kernel_size: int | Sequence[int], *,
                    strides: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0,
                    dilation: int | Sequence[int] = 1, out_capacity: int | None = None,
                    method: str = "auto", max_chunk_elements: int | None = None,
                    backend: str = "auto", interpret: bool = False,
                    where: str = "sparse_max_pool") -> SparseTensor:
  """spconv ``SparseMaxPool3d`` on the chosen backend (out = max(0, max of active inputs))."""
  name, interp = resolve_backend(backend, interpret, where)
  if name == "xla":
    return reference.sparse_max_pool(st, kernel_size, strides=strides, padding=padding,
                                     dilation=dilation, out_capacity=out_capacity, where=where,
                                     **_reference_kwargs(method, None, max_chunk_elements))
  from recoil_jax.ops.sparse.pallas import maxpool, rulebook
  ks = km.triple(kernel_size, "kernel_size")
  ss = ks if strides is None else km.triple(strides, "strides")
  ps, ds = km.triple(padding, "padding"), km.triple(dilation, "dilation")
  out_shape = km.conv_output_shape(st.spatial_shape, ks, ss, ps, ds)
  if out_capacity is None:
    out_capacity = km.default_out_capacity(st.capacity, st.batch_size, out_shape, ks, ss, ds)
  kmap = rulebook.build_conv_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, ps, ds,
                                 out_capacity, build_in_map=True, interpret=interp)
  reference.raise_on_overflow(kmap, out_capacity, where)
  out = maxpool.max_pool_features(st.features, kmap.out_map, kmap.in_map, interp)
  out = jnp.where((kmap.out_coords[:, 0] >= 0)[:, None], out, 0)
  return SparseTensor(coords=kmap.out_coords, features=out, spatial_shape=out_shape,
                      batch_size=st.batch_size, overflow=st.overflow + kmap.overflow)
