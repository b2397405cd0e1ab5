"""Sparse 3D convolution with spconv semantics: data structure, kernel maps, XLA reference, layers."""

from recoil_jax.ops.sparse.kernel_map import (
    KernelMap,
    build_conv_map,
    build_subm_map,
    conv_output_shape,
    default_out_capacity,
)
from recoil_jax.ops.sparse.layers import SparseConv3d, SparseMaxPool3d, SubMConv3d, ToDense
from recoil_jax.ops.sparse.pallas.selfcheck import pallas_status
from recoil_jax.ops.sparse.reference import (
    conv_compute,
    gather_matmul,
    gather_max,
    matmul_scatter,
    sparse_conv,
    sparse_max_pool,
    subm_conv,
)
from recoil_jax.ops.sparse.tensor import (
    CapacityOverflowError,
    SparseTensor,
    check_overflow,
    from_dense,
    from_padded_voxels,
    to_dense,
)

__all__ = [
    "CapacityOverflowError",
    "KernelMap",
    "SparseConv3d",
    "SparseMaxPool3d",
    "SparseTensor",
    "SubMConv3d",
    "ToDense",
    "build_conv_map",
    "build_subm_map",
    "check_overflow",
    "conv_compute",
    "conv_output_shape",
    "default_out_capacity",
    "from_dense",
    "from_padded_voxels",
    "gather_matmul",
    "gather_max",
    "matmul_scatter",
    "pallas_status",
    "sparse_conv",
    "sparse_max_pool",
    "subm_conv",
    "to_dense",
]
