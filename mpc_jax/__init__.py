"""mpc-jax: Multi-view Pixel Contrast (MPC) for image forgery localization in JAX/Flax."""

__version__ = "0.1.0"
