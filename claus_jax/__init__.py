"""claus_jax: CLAUS hybrid active learning for video action detection in JAX/Flax."""

__version__ = "0.1.0"
