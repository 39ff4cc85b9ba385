"""Stage-2 loss of MPC: sigmoid focal loss on the localization logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mpc_jax.losses.sampling import downsample_mask_nearest


def sigmoid_focal_loss(
  logits: jax.Array, target: jax.Array, *, alpha: float = 0.5, gamma: float = 2.0
) -> jax.Array:
  """Mean over pixels of `alpha_t * (1 - p_t)**gamma * BCE(logits, target)`.

  Args:
    logits: `[B, h, w, 1]` or `[B, h, w]`.
    target: `[B, H, W]` (or `[B, H, W, 1]`) in [0, 1]; resized to `(h, w)` by nearest
      neighbour (PyTorch rounding) when the sizes differ.
    alpha: weight of the forged class (`alpha_t = alpha*t + (1-alpha)*(1-t)`); `< 0` disables.
    gamma: focusing exponent.
  Returns:
    float32 scalar.
  """
  x = jnp.asarray(logits, jnp.float32)
  t = jnp.asarray(target, jnp.float32)
  if x.ndim == 4:
    x = x[..., 0]
  if t.ndim == 4:
    t = t[..., 0]
  if t.shape[-2:] != x.shape[-2:]:
    t = downsample_mask_nearest(t, x.shape[-2:])
  p = jax.nn.sigmoid(x)
  ce = jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
  p_t = p * t + (1.0 - p) * (1.0 - t)
  loss = ce * (1.0 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
  return jnp.mean(loss)
