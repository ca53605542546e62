"""Command-line tools: ``python -m claus_jax.tools.import_i3d`` (pytorch_i3d weights -> orbax)."""
