"""Validation during training, as the reference's `ForensicTesting`, and sample images.

Stage 1 predicts with k-means (k=2, cosine) on each image's fused, L2-normalised features (the
smaller cluster is forged); stage 2 with `sigmoid(logits)`. Either map, at 1/4 of the input, is
resized bilinearly to the ground truth's original size and thresholded at 0.5; per-image pixel F1
and IoU (`mpc_jax.metrics` conventions) are averaged over the forged images (the reference's
validation lists hold forged images only) and also over all images. The score that drives the
schedule and the best checkpoint is `mean(F1, IoU)` over the validation sets.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from mpc_jax import distributed, metrics
from mpc_jax.data import pipeline

log = logging.getLogger(__name__)


def build_val_sources(config_data):
  """[(name, source)] for `config.data.val_sources` (bad files raise, as in evaluation)."""
  return [(spec, src) for spec, _, src in pipeline.build_sources(config_data, "val_sources", "raise")]


def _batches(config_data, source, batch_size_per_process, mesh):
  """Yields this process's padded eval batches; every process yields the same number of batches
  (all-padding ones where its part runs out) so the sharded predict step never deadlocks."""
  pc, pi = jax.process_count(), jax.process_index()
  per_process = math.ceil(len(source) / pc)
  n_batches = max(1, math.ceil(per_process / batch_size_per_process))
  it = pipeline.make_eval_iterator(
    config_data, source, batch_size=batch_size_per_process, process_index=pi, process_count=pc
  )
  template = None
  for _ in range(n_batches):
    batch = next(it, None)
    if batch is None:
      batch = {k: (np.zeros_like(v) if isinstance(v, np.ndarray) else []) for k, v in template.items()}
    template = batch
    yield batch


def evaluate(predict_fn, state, config_data, sources, *, batch_size: int, mesh, num_images: int = 0):
  """Runs `predict_fn(state, global_batch) -> [B, h, w] probabilities in [0, 1]` over each source.

  Returns `(scalars, samples)`: `scalars` has `<name>/f1`, `<name>/iou`, `<name>/f1_all`,
  `<name>/iou_all`, `<name>/num`, plus `f1`, `iou` (means over sources) and `score`
  (`mean(F1s + IoUs)`, as the reference); `samples` is up to `num_images` tiles (image | ground
  truth | prediction) from the first source, float32 `[N, S, 3S, 3]`, on process 0.
  """
  bpp = distributed.local_batch_size(batch_size, mesh)
  scalars, f1s, ious, samples = {}, [], [], []
  for name, source in sources:
    rows = []  # (f1, iou, forged)
    for batch in _batches(config_data, source, bpp, mesh):
      g = distributed.global_batch({"image": batch["image"]}, mesh)
      prob = predict_fn(state, g["image"])
      prob = (
        np.asarray(multihost_utils.process_allgather(prob, tiled=True))
        if jax.process_count() > 1
        else np.asarray(prob)
      )
      lo = jax.process_index() * bpp
      prob = prob[lo : lo + bpp]
      for i, gt in enumerate(batch["mask"]):
        if not batch["valid"][i]:
          continue
        p = metrics.resize_prob(prob[i], gt.shape)
        f1 = float(metrics.pixel_f1(p, gt)[()])
        iou = float(metrics.pixel_iou(p, gt)[()])
        rows.append((f1, iou, float(gt.any())))
        if len(samples) < num_images and not f1s:
          samples.append(_tile(batch["image"][i], batch["mask_small"][i], prob[i]))
    rows = np.asarray(rows, np.float64).reshape(-1, 3)
    # forged-weighted F1 and IoU sums, forged count, plain sums, image count: summed over processes
    sums = np.array(
      [
        rows[:, 0] @ rows[:, 2],
        rows[:, 1] @ rows[:, 2],
        rows[:, 2].sum(),
        rows[:, 0].sum(),
        rows[:, 1].sum(),
        len(rows),
      ]
    )
    if jax.process_count() > 1:
      sums = np.asarray(multihost_utils.process_allgather(sums)).reshape(-1, 6).sum(0)
    nf, n = max(sums[2], 1.0), max(sums[5], 1.0)
    f1, iou = (sums[0] / nf, sums[1] / nf) if sums[2] > 0 else (sums[3] / n, sums[4] / n)
    scalars.update(
      {
        f"{name}/f1": f1,
        f"{name}/iou": iou,
        f"{name}/f1_all": sums[3] / n,
        f"{name}/iou_all": sums[4] / n,
        f"{name}/num": sums[5],
      }
    )
    f1s.append(f1)
    ious.append(iou)
  scalars["f1"] = float(np.mean(f1s))
  scalars["iou"] = float(np.mean(ious))
  scalars["score"] = float(np.mean(f1s + ious))
  return scalars, (np.stack(samples) if samples else None)


def _tile(image, gt_small, prob):
  """image | ground truth | prediction, side by side, float32 [S, 3S, 3]."""
  s = image.shape[0]

  def up(m):
    return np.repeat(metrics.resize_prob(m, (s, s))[..., None], 3, axis=-1)

  return np.concatenate([image, up(gt_small), up(prob)], axis=1).astype(np.float32)
