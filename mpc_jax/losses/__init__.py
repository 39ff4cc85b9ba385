"""Losses of MPC: the stage-1 multi-view pixel contrast and the stage-2 focal loss.

* `multiview_pixel_contrast(view_a, view_b, mask, *, key, num_samples=5000, temperature=0.1,
  negatives='image', bank_per_image=256, chunk_size=1024, axis_name=None)` -> dict of scalars
  `total, intra, cross_scale, cross_modality`.
* `multiview_pixel_contrast_sharded(view_a, view_b, mask, *, key, mesh, axis_name='data', **kw)`:
  the same under `jax.shard_map` over the mesh's data axis (use with `negatives='global'`).
* `sigmoid_focal_loss(logits, target, *, alpha=0.5, gamma=2.0)` -> scalar.
* helpers: `downsample_mask_nearest`, `sample_indices`, `info_nce`, `l2_normalize`.
"""

from mpc_jax.losses.contrast import (
  info_nce,
  l2_normalize,
  multiview_pixel_contrast,
  multiview_pixel_contrast_sharded,
)
from mpc_jax.losses.focal import sigmoid_focal_loss
from mpc_jax.losses.sampling import downsample_mask_nearest, nearest_source_index, sample_indices

__all__ = [
  "downsample_mask_nearest",
  "info_nce",
  "l2_normalize",
  "multiview_pixel_contrast",
  "multiview_pixel_contrast_sharded",
  "nearest_source_index",
  "sample_indices",
  "sigmoid_focal_loss",
]
