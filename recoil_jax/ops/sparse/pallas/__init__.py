"""Hash-based sparse 3D convolution kernels in Pallas (GPU; interpret mode on CPU).

Modules (import them directly; this package only exposes the backend dispatch so that importing it
does not load ``jax.experimental.pallas``):

* `hash`     -- open-addressing, linear-probing int32 hash table: ordered insert kernel (scalar
                ``atomic_min`` eviction), value and lookup kernels;
* `rulebook` -- `KernelMap`s (identical to `kernel_map`'s) from hash lookups: strided and
                submanifold convs, max pooling, and the transposed map for backward passes;
* `conv`     -- output-stationary gather -> matmul -> accumulate kernel with a kernel-based VJP;
* `maxpool`  -- gather-max kernel with an argmax-routed, atomic-free VJP;
* `dispatch` -- ``backend="xla" | "pallas" | "auto"`` for the functional ops and the layers.
"""

from recoil_jax.ops.sparse.pallas.dispatch import (
    BACKENDS,
    resolve_backend,
    sparse_conv,
    sparse_max_pool,
    subm_conv,
    use_backend,
)

__all__ = ["BACKENDS", "resolve_backend", "sparse_conv", "sparse_max_pool", "subm_conv",
           "use_backend"]
