"""Study-independent analysis shared by the studies (numpy + matplotlib, no JAX).

* ``recoil_jax.analysis.direction``: angular errors, vMF cone calibration, the κ-cut
  efficiency curve and their plots, for every direction study.

Submodules are not imported here (they pull in matplotlib): import them directly.
"""
