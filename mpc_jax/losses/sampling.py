"""Static-shape helpers for the pixel losses: nearest-neighbour mask pyramids and set sampling.

Everything here works on shapes known at trace time, so it can run under `jax.jit`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def nearest_source_index(out_size: int, in_size: int) -> np.ndarray:
  """Source index of every output index for PyTorch's `interpolate(mode='nearest')`.

  PyTorch computes `min(floor(dst * (in / out)), in - 1)` in float32 (with the scale itself a
  float32 `in / out`); we do the same in numpy so odd sizes round exactly like the reference.

  Returns an int32 numpy array of shape `[out_size]`.
  """
  if out_size == in_size:
    return np.arange(out_size, dtype=np.int32)
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1).astype(np.int32)


def downsample_mask_nearest(mask: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour resize of the last two axes, as `F.interpolate(mode='nearest')`.

  Args:
    mask: `[..., H, W]` array (any dtype).
    size: `(h, w)` target size, e.g. `(H // 2**s, W // 2**s)`.
  Returns:
    `[..., h, w]` array of the same dtype.
  """
  h, w = size
  rows = nearest_source_index(h, mask.shape[-2])
  cols = nearest_source_index(w, mask.shape[-1])
  return mask[..., rows, :][..., :, cols]


def sample_indices(key: jax.Array, valid: jax.Array, num_samples: int):
  """Draw up to `num_samples` of the valid entries, uniformly without replacement.

  Args:
    key: PRNG key.
    valid: `[P]` bool, the members of the set.
    num_samples: the most members to keep.
  Returns:
    `(idx, ok)`: `idx` int32 `[k]` and `ok` bool `[k]` with `k = min(num_samples, P)` (static).
    `ok[i]` says whether `idx[i]` is a member. When `num_samples >= P` nothing random happens:
    `idx = arange(P)` and `ok = valid`, so every member is used. Otherwise each member gets an
    iid uniform score, non-members get a score above every member, and the `k` lowest scores
    are kept: a uniform random subset of size `min(k, #members)`, in random order.
  """
  p = valid.shape[0]
  if num_samples >= p:
    return jnp.arange(p, dtype=jnp.int32), valid
  score = jnp.where(valid, jax.random.uniform(key, (p,)), 2.0)
  _, idx = jax.lax.top_k(-score, num_samples)
  return idx.astype(jnp.int32), valid[idx]
