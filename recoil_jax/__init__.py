"""recoil_jax: JAX/Flax machine learning for rare-event and directional particle detectors."""

__version__ = "0.1.0"
