"""Robustness perturbations applied to an input image (uint8 [H, W, 3] RGB) before prediction.

The grids (`GRIDS`) follow IMDL-BenCo's robustness test (`IMDLBenCo/training_scripts/test_robust.py`), so
numbers compare with its tables: JPEG quality 100..50, resize factor 1.0..0.5, Gaussian blur kernel 3..23,
Gaussian noise 3..23 (`apply` says how each is made). Noise is seeded per image, so sweeps are reproducible.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

GRIDS: dict[str, list] = {
  "jpeg": [100, 90, 80, 70, 60, 50],
  "resize": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5],
  "blur": [3, 7, 11, 15, 19, 23],
  "noise": [3, 7, 11, 15, 19, 23],
  "noise_sigma": [3, 7, 11, 15, 19, 23],
}
DEFAULT_KINDS = ("jpeg", "resize", "blur", "noise")
LABELS = {
  "jpeg": "JPEG quality",
  "resize": "resize factor",
  "blur": "Gaussian blur kernel",
  "noise": "Gaussian noise variance",
  "noise_sigma": "Gaussian noise sigma",
}


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  """JPEG-compress `image` (uint8 RGB) at `quality` and decode it."""
  ok, buf = cv2.imencode(
    ".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
  )
  if not ok:
    raise RuntimeError("JPEG encoding failed")
  return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def resize(image: np.ndarray, factor: float) -> np.ndarray:
  """Bilinear rescale of `image` by `factor` (sizes rounded, at least 1 px)."""
  if float(factor) == 1.0:
    return image
  h, w = image.shape[:2]
  nh, nw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
  return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)


def gaussian_blur(image: np.ndarray, ksize: int) -> np.ndarray:
  """Gaussian blur with an odd kernel `ksize`, sigma from the kernel size (OpenCV's rule)."""
  k = int(ksize)
  if k <= 1:
    return image
  if k % 2 == 0:
    raise ValueError(f"blur kernel size must be odd, got {k}")
  return cv2.GaussianBlur(image, (k, k), 0)


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """Add N(0, sigma^2) noise (8-bit units) per pixel and channel, round and clip to uint8."""
  noisy = image.astype(np.float32) + rng.normal(0.0, float(sigma), image.shape).astype(np.float32)
  return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def apply(image: np.ndarray, kind: str, strength, seed: int = 0) -> np.ndarray:
  """Apply perturbation `kind` at `strength` to uint8 [H, W, 3] `image`; `kind='none'` returns it unchanged.

  `jpeg`: cv2 encode/decode at exactly that quality (IMDL-BenCo draws from [q - 1, q]). `blur`: a k x k
  Gaussian kernel, sigma derived from the kernel as OpenCV does (`cv2.GaussianBlur(ksize=(k, k), sigma=0)`,
  as albumentations' `GaussianBlur(blur_limit=(k, k))`). `noise`: the **variance** in 8-bit units of
  additive per-pixel, per-channel Gaussian noise (IMDL-BenCo passes the number as albumentations'
  `GaussNoise(var_limit=(v, v))`, so sigma = sqrt(v)); `noise_sigma`: the same numbers read as the standard
  deviation (stronger). `resize`: bilinear downscale (the prediction is compared at the mask's size).
  """
  if kind in ("none", None):
    return image
  image = np.asarray(image, np.uint8)
  if kind == "jpeg":
    return jpeg(image, int(strength))
  if kind == "resize":
    return resize(image, float(strength))
  if kind == "blur":
    return gaussian_blur(image, int(strength))
  if kind in ("noise", "noise_sigma"):
    sigma = float(strength) ** 0.5 if kind == "noise" else float(strength)
    return gaussian_noise(image, sigma, np.random.default_rng(seed))
  raise ValueError(f"unknown perturbation {kind!r}; choose from {sorted(GRIDS)}")


def parse_spec(spec: str | Sequence[str] | None) -> list[tuple[str, list]]:
  """Parse `--perturb`: 'all', 'jpeg,blur', or with strengths 'jpeg:100,70,50;resize:0.5'.

  Returns [(kind, strengths)], default grids where none are given. Repeated flags may be passed as a list."""
  if spec is None:
    return []
  items = [spec] if isinstance(spec, str) else list(spec)
  out: list[tuple[str, list]] = []
  for item in items:
    for part in [p.strip() for p in item.replace(";", " ").split()]:
      if not part:
        continue
      if ":" in part:
        kind, vals = part.split(":", 1)
        conv = float if kind == "resize" else int
        try:
          strengths = [conv(v) for v in vals.split(",") if v]
        except ValueError as e:
          raise ValueError(f"bad strengths in --perturb {part!r}: {e}") from None
        kinds = [(kind, strengths)]
      elif part == "all":
        kinds = [(k, list(GRIDS[k])) for k in DEFAULT_KINDS]
      else:
        kinds = [(k, list(GRIDS.get(k, []))) for k in part.split(",") if k]
      for kind, strengths in kinds:
        if kind not in GRIDS:
          raise ValueError(f"unknown perturbation {kind!r}; choose from {sorted(GRIDS)} or 'all'")
        out.append((kind, strengths))
  return out
