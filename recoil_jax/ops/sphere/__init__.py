"""Spherical CNN ops (study-independent): grids, s2fft transforms, S²/SO(3) layers.

* ``grids``: s2fft samplings (dh, gl) at band-limit L, KamNet's 2b × 2b equiangular grid,
  SO(3) grids, Euler angles ↔ rotation matrices, pixel look-up.
* ``wigner``: float64 Wigner matrices, spherical harmonics, exact rotations of
  coefficients and direct synthesis (references and tests).
* ``transforms``: batched channel-last S² and SO(3) transforms on s2fft's precomputed
  kernels (built once in float64, used in float32).
* ``layers``: Flax S² → SO(3) and SO(3) → SO(3) correlations, Haar means, BatchNorm.
* ``reference``: the layers by direct quadrature on the grid (slow, obvious).
* ``projection``: planar images onto the sphere as spherical MNIST is made (arXiv
  1801.10130), rotated, optionally band-limited.
"""
