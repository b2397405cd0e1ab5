"""Flax Linen sparse 3D layers with spconv semantics (channels-last, static capacities).

Tensor layouts (see `tensor.SparseTensor`):
  coords   [N, 4] int32 (batch, i0, i1, i2), inactive rows batch = -1
  features [N, C]
  kernel   [K0, K1, K2, C_in, C_out] (as ``nn.Conv``), bias [C_out] added on active sites only
  dense    [B, D0, D1, D2, C]

Capacities: a regular conv / pool has ``out_capacity`` output rows (static). ``None`` uses
`kernel_map.default_out_capacity`, N_in * (max outputs one input reaches) capped at B*prod(out_grid):
it cannot overflow but is generous (27x for k6/s2, 64x for k4/s1, exact 1x for k2/s2 pooling), so set
measured capacities for speed. Overflow raises `CapacityOverflowError` (naming the layer and the
numbers) in eager execution; under jit it is counted in ``SparseTensor.overflow``: check it with
`tensor.check_overflow` on the returned tensor.

Backends (``backend`` attribute, see `pallas.dispatch`): ``"xla"`` is the pure-XLA reference
(`reference.py`), ``"pallas"`` the hash-table rulebooks and Pallas GPU kernels (`pallas/`), and
``"auto"`` (default) picks Pallas on a GPU and XLA elsewhere (or what an enclosing
`pallas.dispatch.use_backend` block asks for). Both give the same sites and, up to float rounding,
the same features and gradients. ``interpret=True`` runs the Pallas kernels in the Pallas
interpreter (CPU tests; slow).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from recoil_jax.ops.sparse.kernel_map import triple
from recoil_jax.ops.sparse.pallas import dispatch
from recoil_jax.ops.sparse.tensor import SparseTensor, to_dense

BACKENDS = dispatch.BACKENDS
IntOr3 = int | Sequence[int]
Initializer = Callable[..., jax.Array]


def _check_backend(backend: str, interpret: bool, where: str) -> None:
  """Fails early (at init) on an unknown backend or on Pallas without a GPU or the interpreter."""
  dispatch.resolve_backend(backend, interpret, where)


def _layer_name(module: nn.Module) -> str:
  path = "/".join(str(p) for p in module.scope.path) if module.scope is not None else ""
  return f"{type(module).__name__}({path or module.name or 'unnamed'})"


def _conv_params(module: nn.Module, ks: tuple[int, int, int], c_in: int):
  """``kernel`` [K0, K1, K2, C_in, C_out] and optional ``bias`` [C_out] of a conv layer."""
  kernel = module.param("kernel", module.kernel_init, ks + (c_in, module.features),
                        module.param_dtype)
  bias = (module.param("bias", module.bias_init, (module.features,), module.param_dtype)
          if module.use_bias else None)
  return kernel, bias


class SparseConv3d(nn.Module):
  """spconv ``SparseConv3d``: output site o exists iff o*s - p + k*d is active for some offset k.

  Attributes:
    features: C_out.
    kernel_size, strides, padding, dilation: int or 3 ints (voxels).
    use_bias: add a bias on active output sites.
    out_capacity: static output rows (None: see module docstring).
    method: kernel-map implementation ("auto", "sort", "grid").
    compute: arithmetic ("auto", "gather_first", "matmul_gather", "matmul_scatter";
      "matmul_scatter", auto's usual choice at stride 1, differentiates in reverse mode only).
    backend: "auto" (Pallas on GPU, XLA elsewhere), "xla" or "pallas"; ``method`` and ``compute``
      tune the XLA path only.
    interpret: run the Pallas kernels in the interpreter (CPU tests).
  """
  features: int
  kernel_size: IntOr3
  strides: IntOr3 = 1
  padding: IntOr3 = 0
  dilation: IntOr3 = 1
  use_bias: bool = True
  out_capacity: int | None = None
  method: str = "auto"
  compute: str = "auto"
  backend: str = "auto"
  interpret: bool = False
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, st: SparseTensor) -> SparseTensor:
    """[N_in, C_in] sparse input -> [out_capacity, C_out] sparse output on the strided grid."""
    name = _layer_name(self)
    _check_backend(self.backend, self.interpret, name)
    ks = triple(self.kernel_size, "kernel_size")
    kernel, bias = _conv_params(self, ks, st.num_channels)
    return dispatch.sparse_conv(st, kernel, bias, strides=self.strides, padding=self.padding,
                                dilation=self.dilation, out_capacity=self.out_capacity,
                                method=self.method, compute=self.compute, backend=self.backend,
                                interpret=self.interpret, where=name)


class SubMConv3d(nn.Module):
  """spconv ``SubMConv3d``: submanifold conv, output sites = input sites (odd kernel sizes).

  Attributes:
    features: C_out.
    kernel_size: odd int or 3 odd ints.
    dilation: int or 3 ints.
    use_bias, method, compute, backend, interpret, param_dtype, kernel_init, bias_init: as
      `SparseConv3d`.
  """
  features: int
  kernel_size: IntOr3
  dilation: IntOr3 = 1
  use_bias: bool = True
  method: str = "auto"
  compute: str = "auto"
  backend: str = "auto"
  interpret: bool = False
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, st: SparseTensor) -> SparseTensor:
    """[N, C_in] -> [N, C_out] on the same sites."""
    name = _layer_name(self)
    _check_backend(self.backend, self.interpret, name)
    ks = triple(self.kernel_size, "kernel_size")
    if any(k % 2 == 0 for k in ks):
      raise ValueError(f"{name}: SubMConv3d needs odd kernel sizes, got {ks}")
    kernel, bias = _conv_params(self, ks, st.num_channels)
    return dispatch.subm_conv(st, kernel, bias, dilation=self.dilation, method=self.method,
                              compute=self.compute, backend=self.backend,
                              interpret=self.interpret, where=name)


class SparseMaxPool3d(nn.Module):
  """spconv ``SparseMaxPool3d``: regular-conv site rule, out = max(0, max over active window inputs).

  Attributes:
    kernel_size: int or 3 ints.
    strides: int or 3 ints (None: = kernel_size).
    padding, dilation: int or 3 ints.
    out_capacity: static output rows (None: N_in when kernel <= stride, see module docstring).
    method, backend, interpret: as `SparseConv3d`.
  """
  kernel_size: IntOr3
  strides: IntOr3 | None = None
  padding: IntOr3 = 0
  dilation: IntOr3 = 1
  out_capacity: int | None = None
  method: str = "auto"
  backend: str = "auto"
  interpret: bool = False

  @nn.compact
  def __call__(self, st: SparseTensor) -> SparseTensor:
    name = _layer_name(self)
    _check_backend(self.backend, self.interpret, name)
    return dispatch.sparse_max_pool(st, self.kernel_size, strides=self.strides,
                                    padding=self.padding, dilation=self.dilation,
                                    out_capacity=self.out_capacity, method=self.method,
                                    backend=self.backend, interpret=self.interpret, where=name)


class ToDense(nn.Module):
  """SparseTensor -> dense [B, D0, D1, D2, C] (channels-last)."""

  @nn.compact
  def __call__(self, st: SparseTensor) -> jax.Array:
    return to_dense(st)
