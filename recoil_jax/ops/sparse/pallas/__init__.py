"""Hash-based sparse 3D convolution kernels in Pallas (GPU; interpret mode on CPU).

Modules (import them directly; this package only exposes the backend dispatch and the self-check
status, so that importing it does not load ``jax.experimental.pallas``):

* `hash`     -- open-addressing, linear-probing int32 hash table: ordered insert kernel (scalar
                ``atomic_min`` eviction), value and lookup kernels;
* `rulebook` -- `KernelMap`s (identical to `kernel_map`'s) from hash lookups: strided and
                submanifold convs, max pooling, and the transposed map for backward passes;
* `conv`     -- output-stationary gather -> matmul -> accumulate kernel with a kernel-based VJP;
* `maxpool`  -- gather-max kernel with an argmax-routed, atomic-free VJP;
* `dispatch` -- ``backend="xla" | "pallas" | "auto"`` for the functional ops and the layers;
* `selfcheck` -- the Pallas-vs-XLA check run before ``"auto"`` first picks Pallas on a GPU
                (`pallas_status`; ``RECOIL_JAX_PALLAS_SELFCHECK=0`` skips it).
"""

from recoil_jax.ops.sparse.pallas.dispatch import (
    BACKENDS,
    resolve_backend,
    sparse_conv,
    sparse_max_pool,
    subm_conv,
    use_backend,
)
from recoil_jax.ops.sparse.pallas.selfcheck import pallas_status

__all__ = ["BACKENDS", "pallas_status", "resolve_backend", "sparse_conv", "sparse_max_pool",
           "subm_conv", "use_backend"]
