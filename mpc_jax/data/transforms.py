"""Training and evaluation transforms (grain transforms), equivalent to the reference's `mydatasets.py`.

`TrainTransform` runs the reference's augmentation chain, then resizes (with an optional second view for
the stage-1 contrast); `EvalTransform` only resizes the image and keeps the mask at its own size, as the
reference's test protocol does. Albumentations 2.x defaults differ from the 1.x the reference ran, so
parameters are set to the 1.x behaviour where it matters (GaussNoise variance 10..50 on the 0..255 scale,
reflect-101 borders, GaussianBlur kernel 3..7 with OpenCV's sigma for those kernels, 0.8..1.4);
ElasticTransform's 1.x extra random affine (`alpha_affine`) no longer exists.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import cv2
import grain
import numpy as np

from mpc_jax.data.config import DataConfig

__all__ = ["TrainTransform", "EvalTransform", "resize_mask_like_reference", "jpeg_recompress"]

cv2.setNumThreads(1)  # parallelism comes from grain workers; nested OpenCV threads only contend


def resize_mask_like_reference(mask255: np.ndarray, size: int) -> np.ndarray:
  """uint8 0/255 [H, W] -> float32 [size, size] in {0, 1}: bilinear resize, then > 127."""
  if mask255.shape[:2] != (size, size):
    mask255 = cv2.resize(mask255, (size, size), interpolation=cv2.INTER_LINEAR)
  return (mask255 > 127).astype(np.float32)


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
  """JPEG encode/decode round trip of an RGB uint8 [H, W, 3] image at `quality`."""
  ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
  if not ok:
    return image
  return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]


def _pad_reflect(image, mask, size):
  h, w = image.shape[:2]
  ph, pw = max(0, size - h), max(0, size - w)
  if not ph and not pw:
    return image, mask
  top, left = ph // 2, pw // 2
  args = (top, ph - top, left, pw - left, cv2.BORDER_REFLECT_101)
  # cv2 reflect-101 needs the image to be larger than the pad; fall back to edge replication
  if ph >= h or pw >= w:
    args = (top, ph - top, left, pw - left, cv2.BORDER_REPLICATE)
  return cv2.copyMakeBorder(image, *args), cv2.copyMakeBorder(mask, *args)


def _flip(arr, k):
  """k=0 horizontal flip, k=1 vertical flip, k=3 transpose (k=2, rot90, is drawn by the caller)."""
  if k == 0:
    return np.ascontiguousarray(arr[:, ::-1])
  if k == 1:
    return np.ascontiguousarray(arr[::-1])
  return np.ascontiguousarray(arr.swapaxes(0, 1))


def _import_albumentations():
  """Import albumentations without its online version check and without pulling in torch (seconds)."""
  import os
  import sys

  os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
  if "albumentations" in sys.modules or "torch" in sys.modules:
    import albumentations

    return albumentations
  blocked = "albumentations.pytorch" not in sys.modules
  if blocked:
    sys.modules["albumentations.pytorch"] = None  # its `from .pytorch import *` is ImportError-guarded
  try:
    import albumentations
  finally:
    if blocked and sys.modules.get("albumentations.pytorch", 0) is None:
      del sys.modules["albumentations.pytorch"]
  return albumentations


class _Albu:
  """The albumentations members of the reference's last OneOf, built lazily (per process)."""

  def __init__(self):
    A = _import_albumentations()

    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.blur = [
        A.Blur(p=1),
        A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.8, 1.4), p=1),
        A.MedianBlur(p=1),
        A.MotionBlur(p=1),
      ]
      self.noise_colour = [
        A.Downscale(scale_range=(0.25, 0.25), p=1),
        A.GaussNoise(std_range=(math.sqrt(10) / 255, math.sqrt(50) / 255), p=1),
        A.ISONoise(p=1),
        A.RandomBrightnessContrast(p=1),
        A.RandomGamma(p=1),
        A.RandomToneCurve(p=1),
        A.Sharpen(p=1),
      ]
      self.distortion = [
        A.ElasticTransform(alpha=120, sigma=120 * 0.05, border_mode=cv2.BORDER_REFLECT_101, p=1),
        A.GridDistortion(border_mode=cv2.BORDER_REFLECT_101, p=1),
      ]

  @staticmethod
  def apply(t, seed: int, image, mask=None):
    t.set_random_seed(int(seed))
    if mask is None:
      return t(image=image)["image"], None
    out = t(image=image, mask=mask)
    return out["image"], out["mask"]


class TrainTransform(grain.transforms.RandomMap):
  """Reference training augmentation + resize (+ optional second view).

  With probability `augment_prob`, the reference chain:
    1. random down-scale by s ~ U(0.5, 1.0), p 0.75 (image bilinear, mask nearest);
    2. pad to `input_size` (reflect-101 border, albumentations 1.x's default, as the reference ran);
    3. one of {horizontal flip, vertical flip, rot90 (k in 1..3), transpose}, p 0.75;
    4. JPEG re-compression, quality ~ U{50..95}, p 0.75;
    5. p 0.25: one family, uniformly, then one member uniformly: blur {Blur, GaussianBlur, MedianBlur,
       MotionBlur}, noise/colour {Downscale, GaussNoise, ISONoise, RandomBrightnessContrast, RandomGamma,
       RandomToneCurve, Sharpen}, distortion {ElasticTransform(alpha=120, sigma=6), GridDistortion};
  then (always) the image is resized to S = `input_size` (bilinear) and the mask to S/g, g = `gt_ratio`
  (bilinear on 0/255, then > 127, as the reference does).

  Input record: `{'image': uint8 [H, W, 3], 'mask': uint8 [H, W] {0,1}, ...}`; output:
    'image'        float32 [S, S, 3] in [0, 1] (RGB / 255, no mean/std)
    'mask'         float32 [S/g, S/g] in {0, 1} (the stage-1 loss resizes it to each feature scale)
    'image_view2'  float32 [S, S, 3], only with `second_view=True`: the same geometry (scale, pad, flip,
                   distortion: identical parameters) with an independent photometric draw (JPEG p 0.75
                   q 50..95, then p 0.25 one of the blur / noise-colour families), so the mask fits both.
  Deterministic given the `rng` grain passes in.
  """

  def __init__(
    self,
    input_size: int = DataConfig.input_size,
    gt_ratio: int = DataConfig.gt_ratio,
    *,
    augment: bool = DataConfig.augment,
    augment_prob: float = DataConfig.augment_prob,
    second_view: bool = DataConfig.second_view,
  ):
    self.input_size = int(input_size)
    self.gt_ratio = int(gt_ratio)
    self.augment = bool(augment)
    self.augment_prob = float(augment_prob)
    self.second_view = bool(second_view)
    self._albu = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_albu"] = None
    return state

  @property
  def albu(self) -> _Albu:
    if self._albu is None:
      self._albu = _Albu()
    return self._albu

  # -- photometric draws (independent per view) ----------------------------------------------------
  def _photometric(self, rng: np.random.Generator, image: np.ndarray, family_p: float) -> np.ndarray:
    if rng.random() < 0.75:
      image = jpeg_recompress(image, int(rng.integers(50, 96)))
    if rng.random() < family_p:
      fam = self.albu.blur if rng.random() < 0.5 else self.albu.noise_colour
      t = fam[int(rng.integers(len(fam)))]
      image, _ = _Albu.apply(t, rng.integers(2**31), image)
    return image

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    S = self.input_size
    image = element["image"]
    mask255 = (element["mask"] > 0).astype(np.uint8) * 255
    view2 = None
    if self.augment and rng.random() < self.augment_prob:
      # geometry, shared by both views
      if rng.random() < 0.75:
        s = rng.uniform(0.5, 1.0)
        h, w = image.shape[:2]
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        mask255 = cv2.resize(mask255, (nw, nh), interpolation=cv2.INTER_NEAREST)
      image, mask255 = _pad_reflect(image, mask255, S)
      if rng.random() < 0.75:
        k = int(rng.integers(4))
        if k == 2:
          r = int(rng.integers(1, 4))
          image = np.ascontiguousarray(np.rot90(image, r))
          mask255 = np.ascontiguousarray(np.rot90(mask255, r))
        else:
          image, mask255 = _flip(image, k), _flip(mask255, k)
      geo_image = image
      # view 1: the reference's photometric order (JPEG, then the last OneOf)
      if rng.random() < 0.75:
        image = jpeg_recompress(image, int(rng.integers(50, 96)))
      distortion = None
      if rng.random() < 0.25:
        fam_k = int(rng.integers(3))
        fam = (self.albu.blur, self.albu.noise_colour, self.albu.distortion)[fam_k]
        t = fam[int(rng.integers(len(fam)))]
        seed = int(rng.integers(2**31))
        if fam_k == 2:
          distortion = (t, seed)
          image, mask255 = _Albu.apply(t, seed, image, mask255)
        else:
          image, _ = _Albu.apply(t, seed, image)
      if self.second_view:
        v2 = self._photometric(rng, geo_image, 0.25)
        if distortion is not None:
          v2, _ = _Albu.apply(distortion[0], distortion[1], v2, mask255)
        view2 = v2
    elif self.second_view:
      view2 = self._photometric(rng, image, 0.25)

    out_image = (
      cv2.resize(image, (S, S), interpolation=cv2.INTER_LINEAR) if image.shape[:2] != (S, S) else image
    )
    mask = resize_mask_like_reference(mask255, S // self.gt_ratio)
    out = {
      "image": out_image.astype(np.float32) * np.float32(1 / 255),
      "mask": mask,
    }
    if self.second_view:
      if view2.shape[:2] != (S, S):
        view2 = cv2.resize(view2, (S, S), interpolation=cv2.INTER_LINEAR)
      out["image_view2"] = view2.astype(np.float32) * np.float32(1 / 255)
    return out


class EvalTransform(grain.transforms.Map):
  """No augmentation: image resized to S for the model; the mask kept at its original size.

  Output: `{'image': f32 [S, S, 3], 'mask': uint8 [H, W], 'mask_small': f32 [S/g, S/g],
  'orig_hw': int32 [2], 'path': str}`. A `None` record (skipped bad example) passes through as `None`.
  """

  def __init__(self, input_size: int = DataConfig.input_size, gt_ratio: int = DataConfig.gt_ratio):
    self.input_size = int(input_size)
    self.gt_ratio = int(gt_ratio)

  def map(self, element):
    if element is None:
      return None
    S = self.input_size
    image, mask = element["image"], element["mask"]
    h, w = image.shape[:2]
    img = cv2.resize(image, (S, S), interpolation=cv2.INTER_LINEAR) if (h, w) != (S, S) else image
    return {
      "image": img.astype(np.float32) * np.float32(1 / 255),
      "mask": mask.astype(np.uint8),
      "mask_small": resize_mask_like_reference(mask.astype(np.uint8) * 255, S // self.gt_ratio),
      "orig_hw": np.asarray([h, w], np.int32),
      "path": str(element.get("path", "")),
    }
