"""Synthetic image forgeries, generated offline from images that ship with scikit-image + procedural textures.

They let the demo and the tests train and score a model with no dataset to download. Kinds: 'splice' (a
region from another image), 'copymove' (from the same image, shifted, maybe rescaled/rotated), 'removal'
(OpenCV inpainting) and 'authentic'; regions are random polygons, ellipses or brush strokes. Every image
has a camera-like history (sensor noise, a first JPEG) and the composite is post-processed (resampling,
noise, a second JPEG), so the forged region's history differs from the rest's.
`difficulty` in [0, 1] sets how loud the traces are: at 0 (the CPU demo) every forged region carries a loud
noise-level mismatch; at 1 noise levels match under heavy post-processing. Colour is matched at every
difficulty, so a coloured boundary is never the cue (`trivial_detector_f1` checks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import threading
import time

import cv2
import numpy as np

from mpc_jax.metrics import pixel_f1

__all__ = [
  "KINDS",
  "SyntheticConfig",
  "generate_example",
  "SyntheticSource",
  "write_dataset",
  "cli_main",
  "trivial_detector_f1",
  "natural_images",
]

KINDS = ("splice", "copymove", "removal", "authentic")
_TAMPER_P = {"splice": 0.4, "copymove": 0.3, "removal": 0.3}

_COLOUR_FILES = (
  "astronaut.png",
  "chelsea.png",
  "coffee.png",
  "rocket.jpg",
  "motorcycle_left.png",
  "motorcycle_right.png",
  "hubble_deep_field.jpg",
  "retina.jpg",
  "ihc.png",
)
_GRAY_FILES = (
  "camera.png",
  "brick.png",
  "grass.png",
  "gravel.png",
  "moon.png",
  "coins.png",
  "clock_motion.png",
  "cell.png",
  "page.png",
  "text.png",
)
_POOL: list[np.ndarray] | None = None
_POOL_LOCK = threading.Lock()
SPEC_FORM = "synthetic:NUM[:SEED[:SIZE[:DIFFICULTY]]]"


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """A synthetic set's settings; the defaults here are the only ones (the functions below, the
  `synthetic:...` spec string, `config.data.synthetic` and `mpc-jax synth` all take theirs from here)."""

  num: int = 512  # examples (the spec string and `mpc-jax synth` always give it)
  seed: int = 0  # example i draws from default_rng([seed, i])
  size: int = 256  # image side in pixels
  difficulty: float = 0.5  # 0 = loud traces (demo) ... 1 = hard (see the module doc)
  authentic_prob: float = 0.1  # probability that an example is authentic (untouched)
  cache: bool = True  # keep generated examples in memory

  @classmethod
  def from_spec(cls, spec: str) -> "SyntheticConfig":
    """`synthetic:NUM[:SEED[:SIZE[:DIFFICULTY]]]` (empty or left-out parts take the defaults)."""
    parts = spec.split(":")
    if parts[0] != "synthetic" or len(parts) < 2:
      raise ValueError(f"synthetic spec must be {SPEC_FORM!r}, got {spec!r}")
    kw = {}
    try:
      for (name, kind), text in zip(
        (("num", int), ("seed", int), ("size", int), ("difficulty", float)), parts[1:]
      ):
        if text or name == "num":
          kw[name] = kind(text)
    except ValueError:
      raise ValueError(f"synthetic spec must be {SPEC_FORM!r}, got {spec!r}") from None
    return cls(**kw)

  def source(self) -> "SyntheticSource":
    return SyntheticSource(
      self.num,
      self.seed,
      self.size,
      difficulty=self.difficulty,
      authentic_prob=self.authentic_prob,
      cache=self.cache,
    )


def natural_images() -> list[np.ndarray]:
  """The scikit-image sample photographs (RGB uint8, longest side <= 640), loaded once from the package."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      pool = []
      try:
        import skimage

        d = os.path.join(os.path.dirname(skimage.__file__), "data")
      except ImportError:  # pragma: no cover - scikit-image is a dependency
        d = None
      for f in _COLOUR_FILES + _GRAY_FILES:
        p = os.path.join(d, f) if d else ""
        a = _imread_no_icc(p) if d and os.path.isfile(p) else None
        if a is None:
          continue
        a = a[:, :, ::-1]
        s = 640 / max(a.shape[:2])
        if s < 1:
          a = cv2.resize(a, (int(a.shape[1] * s), int(a.shape[0] * s)), interpolation=cv2.INTER_AREA)
        pool.append((np.ascontiguousarray(a), f in _GRAY_FILES))
      _POOL = pool
    return _POOL


def _imread_no_icc(path: str) -> np.ndarray | None:
  """`cv2.imread(path, IMREAD_COLOR)` without a PNG's `iCCP` chunk: libpng warns on stderr about the
  malformed colour profile of scikit-image's `page.png`; the pixels do not depend on it."""
  with open(path, "rb") as f:
    data = f.read()
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    out, i = [data[:8]], 8
    while i + 8 <= len(data):
      n = int.from_bytes(data[i : i + 4], "big")
      if data[i + 4 : i + 8] != b"iCCP":
        out.append(data[i : i + 12 + n])
      i += 12 + n
    data = b"".join(out)
  return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _lerp(a, b, t):
  return a + (b - a) * t


# ------------------------------------------------------------------------------------------------------
# Backgrounds
# ------------------------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """Procedural colour texture: multi-octave value noise + oriented waves + a few flat shapes."""
  img = np.zeros((h, w, 3), np.float32)
  beta = rng.uniform(0.6, 1.6)
  for k, s in enumerate((3, 6, 12, 24, 48)):
    n = rng.standard_normal((s, s, 3)).astype(np.float32)
    n[..., 1:] = n[..., :1] * rng.uniform(0.3, 1.0) + n[..., 1:] * rng.uniform(0.0, 0.7)
    img += cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) / (2 ** (k * beta))
  if rng.random() < 0.5:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    th, f = rng.uniform(0, np.pi), rng.uniform(0.02, 0.25)
    wave = np.sin((xx * np.cos(th) + yy * np.sin(th)) * f + rng.uniform(0, 6.3))
    img += wave[..., None] * rng.uniform(0.2, 0.8, 3).astype(np.float32)
  img = (img - img.mean()) / (img.std() + 1e-6)
  img = img * rng.uniform(25, 60) + rng.uniform(70, 185, 3).astype(np.float32)
  out = np.clip(img, 0, 255).astype(np.uint8)
  for _ in range(int(rng.integers(0, 5))):
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    c = (int(rng.integers(w)), int(rng.integers(h)))
    if rng.random() < 0.5:
      cv2.circle(out, c, int(rng.integers(3, max(4, min(h, w) // 5))), colour, -1, cv2.LINE_AA)
    else:
      cv2.rectangle(
        out, c, (c[0] + int(rng.integers(4, w // 3 + 5)), c[1] + int(rng.integers(4, h // 3 + 5))), colour, -1
      )
  return out


def _natural_crop(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  pool = natural_images()
  src, gray = pool[int(rng.integers(len(pool)))]
  H, W = src.shape[:2]
  # crop a window of random scale, then resize to (h, w)
  s = rng.uniform(0.35, 1.0) * min(H / h, W / w)
  ch, cw = max(8, int(h * s)), max(8, int(w * s))
  ch, cw = min(ch, H), min(cw, W)
  y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
  crop = src[y : y + ch, x : x + cw]
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  interp = cv2.INTER_AREA if ch >= h else cv2.INTER_CUBIC
  out = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interp)
  if gray:  # tint grayscale photographs so colour statistics vary
    g = out[..., 0].astype(np.float32)
    a = rng.uniform(0.6, 1.1, 3).astype(np.float32)
    out = np.clip(g[..., None] * a + rng.uniform(-20, 30, 3).astype(np.float32), 0, 255).astype(np.uint8)
  return out


def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
  ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(q)])
  return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1] if ok else img


def _add_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
  if sigma <= 0:
    return img
  n = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
  return np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)


def _camera(rng: np.random.Generator, img: np.ndarray, d: float) -> tuple[np.ndarray, dict]:
  """A camera-like history: sensor noise, slight softening, a first JPEG."""
  p = {
    "noise": float(rng.uniform(0.8, _lerp(2.0, 3.5, d))),
    "jpeg": int(rng.integers(72, 99)) if rng.random() < 0.75 else None,
  }
  if rng.random() < 0.3:
    img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 0.7))
  img = _add_noise(img, rng, p["noise"])
  if p["jpeg"]:
    img = _jpeg(img, p["jpeg"])
  return img, p


def _background(rng: np.random.Generator, h: int, w: int, d: float) -> tuple[np.ndarray, dict]:
  img = _texture(rng, h, w) if rng.random() < 0.3 else _natural_crop(rng, h, w)
  return _camera(rng, img, d)


# ------------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------------


def _shape_mask(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
  m = np.zeros((h, w), np.uint8)
  r = math.sqrt(area * h * w / math.pi)
  cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
  kind = rng.choice(["polygon", "ellipse", "brush"], p=[0.4, 0.35, 0.25])
  if kind == "polygon":
    n = int(rng.integers(3, 13))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.55, 1.45, n)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 255, cv2.LINE_8)
  elif kind == "ellipse":
    e = rng.uniform(1.0, 2.5)
    cv2.ellipse(
      m,
      (int(cx), int(cy)),
      (max(2, int(r * e)), max(2, int(r / e))),
      float(rng.uniform(0, 180)),
      0,
      360,
      255,
      -1,
    )
  else:
    thick = max(3, int(r * rng.uniform(0.35, 0.7)))
    length = area * h * w / thick
    pts = [(cx, cy)]
    ang = rng.uniform(0, 2 * np.pi)
    step = max(4.0, thick * 0.8)
    for _ in range(int(max(2, length / step))):
      ang += rng.normal(0, 0.5)
      x = float(np.clip(pts[-1][0] + step * math.cos(ang), 0, w - 1))
      y = float(np.clip(pts[-1][1] + step * math.sin(ang), 0, h - 1))
      pts.append((x, y))
    cv2.polylines(m, [np.round(np.array(pts)).astype(np.int32)], False, 255, thick, cv2.LINE_8)
  return m


def _region_mask(rng: np.random.Generator, h: int, w: int, difficulty: float) -> np.ndarray:
  lo, hi = _lerp(0.12, 0.02, difficulty), _lerp(0.40, 0.25, difficulty)
  for _ in range(8):
    area = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    m = _shape_mask(rng, h, w, area)
    if rng.random() < 0.2:
      m = np.maximum(m, _shape_mask(rng, h, w, area * rng.uniform(0.3, 0.8)))
    frac = m.mean() / 255
    if 0.005 <= frac <= 0.6:
      return m
  return m


def _alpha(rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
  """float32 [H, W] blending weights: hard (the mask) or feathered (Gaussian-blurred edge)."""
  a = m.astype(np.float32) / 255
  if rng.random() < 0.5:
    s = rng.uniform(0.7, 2.5)
    a = cv2.GaussianBlur(a, (0, 0), s)
  return a


# ------------------------------------------------------------------------------------------------------
# Region processing
# ------------------------------------------------------------------------------------------------------


def _colour_match(src: np.ndarray, dst: np.ndarray, m: np.ndarray, strength: float) -> np.ndarray:
  """Shift/scale `src` per channel (Lab) so the masked region matches the ring of `dst` around it."""
  ring = cv2.dilate(m, np.ones((15, 15), np.uint8)) > 0
  inside = m > 127
  if inside.sum() < 10 or (ring & ~inside).sum() < 10:
    return src
  ls = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
  ld = cv2.cvtColor(dst, cv2.COLOR_RGB2LAB).astype(np.float32)
  sel_s, sel_d = ls[inside], ld[ring & ~inside]
  ms, ss = sel_s.mean(0), sel_s.std(0) + 1.0
  md, sd = sel_d.mean(0), sel_d.std(0) + 1.0
  scale = 1 + strength * (np.clip(sd / ss, 0.5, 2.0) - 1)
  out = (ls - ms) * scale + ms + strength * (md - ms)
  return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _trace(rng: np.random.Generator, region: np.ndarray, d: float, bg_noise: float) -> np.ndarray:
  """A local processing trace on the pasted content; its loudness falls with difficulty `d`."""
  # easy: only loud noise-level traces (learnable fast); hard: all trace types equally, all faint
  p = np.array(
    [_lerp(1.0, 0.2, d), _lerp(0.0, 0.2, d), _lerp(0.0, 0.2, d), _lerp(0.0, 0.2, d), _lerp(0.0, 0.2, d)]
  )
  t = rng.choice(["noise", "blur", "jpeg", "resample", "denoise"], p=p / p.sum())
  if t == "noise":
    return _add_noise(region, rng, _lerp(20.0, 1.2, d) * rng.uniform(0.8, 1.2))
  if t == "blur":
    return cv2.GaussianBlur(region, (0, 0), _lerp(2.0, 0.45, d) * rng.uniform(0.8, 1.2))
  if t == "jpeg":
    dy, dx = int(rng.integers(1, 8)), int(rng.integers(1, 8))  # misaligned 8x8 grid
    shifted = np.roll(region, (dy, dx), (0, 1))
    out = _jpeg(shifted, int(_lerp(25, 85, d) + rng.integers(0, 10)))
    return np.roll(out, (-dy, -dx), (0, 1))
  if t == "resample":
    f = 1 + rng.choice([-1, 1]) * _lerp(0.5, 0.12, d) * rng.uniform(0.7, 1.0)
    h, w = region.shape[:2]
    small = cv2.resize(region, (max(4, int(w * f)), max(4, int(h * f))), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
  # denoise: the region loses the sensor noise the rest of the image has
  k = 5 if d < 0.5 else 3
  return (
    cv2.medianBlur(region, k)
    if rng.random() < _lerp(1.0, 0.5, d)
    else _add_noise(region, rng, bg_noise * 0.5)
  )


def _blend(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  a = alpha[..., None]
  return np.clip(dst.astype(np.float32) * (1 - a) + src.astype(np.float32) * a + 0.5, 0, 255).astype(np.uint8)


def _splice(rng, img, m, d, cam):
  h, w = img.shape[:2]
  f = rng.uniform(0.6, 1.6)  # donor rescale factor: resampling trace
  dh, dw = max(8, int(h * f)), max(8, int(w * f))
  donor, _ = _background(rng, dh, dw, d)
  donor = cv2.resize(donor, (w, h), interpolation=cv2.INTER_LINEAR if f < 1 else cv2.INTER_AREA)
  donor = _colour_match(donor, img, m, strength=_lerp(0.85, 1.0, d))
  if rng.random() < _lerp(1.0, 0.5, d):
    donor = _trace(rng, donor, d, cam["noise"])
  return _blend(img, donor, _alpha(rng, m))


def _copymove(rng, img, m, d, cam):
  h, w = img.shape[:2]
  src = img
  if rng.random() < 0.5:  # rescale / rotate the copied content
    ang = rng.uniform(-30, 30)
    sc = rng.uniform(0.75, 1.3)
    M = cv2.getRotationMatrix2D((w / 2, h / 2), ang, sc)
    src = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
  dy, dx = int(rng.integers(h // 6, h // 2 + 1)), int(rng.integers(w // 6, w // 2 + 1))
  dy, dx = dy * (1 if rng.random() < 0.5 else -1), dx * (1 if rng.random() < 0.5 else -1)
  src = np.roll(src, (dy, dx), (0, 1))
  if rng.random() < _lerp(1.0, 0.6, d):
    src = _trace(rng, src, d, cam["noise"])
  src = _colour_match(src, img, m, strength=rng.uniform(0.0, 0.6))
  return _blend(img, src, _alpha(rng, m))


def _removal(rng, img, m, d, cam):
  h, w = img.shape[:2]
  k = max(3, int(round(min(h, w) / 64)) | 1)
  hole = cv2.dilate(m, np.ones((k, k), np.uint8))
  method = cv2.INPAINT_NS if rng.random() < 0.5 else cv2.INPAINT_TELEA
  if max(h, w) > 320:  # inpaint at half resolution for speed, then upsample
    small = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    hs = cv2.resize(hole, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST)
    fill = cv2.resize(cv2.inpaint(small, hs, 3, method), (w, h), interpolation=cv2.INTER_LINEAR)
  else:
    fill = cv2.inpaint(img, hole, 3, method)
  # re-add noise: far too much when easy (a noisier patch), matched to the background when hard
  fill = _add_noise(fill, rng, _lerp(12.0, cam["noise"], d) * rng.uniform(0.8, 1.05))
  return _blend(img, fill, _alpha(rng, m))


# ------------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------------


def _hw(size) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def generate_example(
  rng: np.random.Generator,
  size=SyntheticConfig.size,
  kind: str | None = None,
  *,
  difficulty: float = SyntheticConfig.difficulty,
  authentic_prob: float = SyntheticConfig.authentic_prob,
) -> dict:
  """One synthetic example.

  Args:
    rng: `np.random.Generator` (the only randomness used).
    size: `(H, W)` or an int.
    kind: one of `KINDS`, or None to draw ('authentic' with `authentic_prob`, else splice 0.4 /
      copymove 0.3 / removal 0.3).
    difficulty: in [0, 1]; 0 = loud traces (demo), 1 = hard (see module doc).
  Returns: `{'image': uint8 [H, W, 3] RGB, 'mask': uint8 [H, W] in {0, 1}, 'kind': str}`.
  """
  h, w = _hw(size)
  if h < 16 or w < 16:
    raise ValueError(f"size must be at least 16x16, got {h}x{w}")
  d = float(difficulty)
  if not 0 <= d <= 1:
    raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
  if kind is None:
    kind = (
      "authentic"
      if rng.random() < authentic_prob
      else str(rng.choice(list(_TAMPER_P), p=list(_TAMPER_P.values())))
    )
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  # Optionally work on a larger canvas and resample down at the end (global resampling).
  resample = rng.random() < _lerp(0.0, 0.5, d)
  f = rng.uniform(1.1, 1.6) if resample else 1.0
  ch, cw = int(round(h * f)), int(round(w * f))
  img, cam = _background(rng, ch, cw, d)
  if kind == "authentic":
    m = np.zeros((ch, cw), np.uint8)
  else:
    m = _region_mask(rng, ch, cw, d)
    img = {"splice": _splice, "copymove": _copymove, "removal": _removal}[kind](rng, img, m, d, cam)
  if resample:
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if rng.random() < 0.5 else cv2.INTER_LINEAR)
    m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
  # global post-processing: noise, then a second JPEG at a different quality
  if rng.random() < _lerp(0.0, 0.6, d):
    img = _add_noise(img, rng, rng.uniform(0.5, _lerp(1.0, 3.0, d)))
  if rng.random() < _lerp(0.3, 0.9, d):
    q = int(rng.integers(int(_lerp(90, 65, d)), 97))
    if cam["jpeg"] is not None and abs(q - cam["jpeg"]) < 3:
      q = int(np.clip(cam["jpeg"] + (5 if cam["jpeg"] < 90 else -5), 50, 100))
    img = _jpeg(img, q)
  mask = (m > 127).astype(np.uint8)
  return {"image": np.ascontiguousarray(img), "mask": mask, "kind": kind}


class SyntheticSource:
  """In-memory random-access source of `num` synthetic examples, deterministic per index.

  Record: `{'image': uint8 [H, W, 3], 'mask': uint8 [H, W] {0,1}, 'path': 'synthetic:SEED:INDEX:KIND',
  'kind': str}`. Example `i` uses `np.random.default_rng([seed, i])`, independent of access order.
  """

  def __init__(
    self,
    num: int,
    seed: int = SyntheticConfig.seed,
    size=SyntheticConfig.size,
    *,
    difficulty: float = SyntheticConfig.difficulty,
    authentic_prob: float = SyntheticConfig.authentic_prob,
    cache: bool = SyntheticConfig.cache,
  ):
    if int(num) <= 0:
      raise ValueError(f"num must be positive, got {num}")
    if not 0 <= float(difficulty) <= 1:
      raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    self.num, self.seed, self.size = int(num), int(seed), _hw(size)
    self.difficulty, self.authentic_prob, self.cache = float(difficulty), float(authentic_prob), bool(cache)
    self._cache: dict[int, dict] = {}
    self.num_bad = 0
    self.bad_examples: list = []

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state

  def __len__(self) -> int:
    return self.num

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if index < 0:
      index += self.num
    if not 0 <= index < self.num:
      raise IndexError(f"index {index} out of range [0, {self.num})")
    rec = self._cache.get(index)
    if rec is None:
      ex = generate_example(
        np.random.default_rng([self.seed, index]),
        self.size,
        difficulty=self.difficulty,
        authentic_prob=self.authentic_prob,
      )
      rec = {
        "image": ex["image"],
        "mask": ex["mask"],
        "kind": ex["kind"],
        "path": f"synthetic:{self.seed}:{index}:{ex['kind']}",
      }
      if self.cache:
        self._cache[index] = rec
    return dict(rec)

  def __iter__(self):
    for i in range(self.num):
      yield self[i]

  def __repr__(self):
    return (
      f"SyntheticSource(num={self.num}, seed={self.seed}, size={self.size}, difficulty={self.difficulty})"
    )


def write_dataset(
  out_dir,
  num: int,
  seed: int = SyntheticConfig.seed,
  size=SyntheticConfig.size,
  *,
  difficulty: float = SyntheticConfig.difficulty,
  authentic_prob: float = SyntheticConfig.authentic_prob,
  progress: bool = False,
) -> dict:
  """Write `out_dir/images/NNNNNN_kind.png` + `out_dir/masks/NNNNNN_kind.png` (0/255, zeros if authentic).

  The folder is what `source_from_spec(out_dir)` reads. Returns counts per kind.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
  src = SyntheticSource(num, seed, size, difficulty=difficulty, authentic_prob=authentic_prob, cache=False)
  counts = {k: 0 for k in KINDS}
  t0 = time.time()
  for i in range(num):
    rec = src[i]
    name = f"{i:06d}_{rec['kind']}.png"
    cv2.imwrite(os.path.join(out_dir, "images", name), rec["image"][:, :, ::-1])
    cv2.imwrite(os.path.join(out_dir, "masks", name), rec["mask"] * 255)
    counts[rec["kind"]] += 1
    if progress and (i + 1 == num or (i + 1) % max(1, num // 20) == 0):
      dt = time.time() - t0
      print(
        f"\rsynth: {i + 1}/{num} examples ({(i + 1) / max(dt, 1e-9):.1f}/s) -> {out_dir}",
        end="\n" if i + 1 == num else "",
        file=sys.stderr,
        flush=True,
      )
  return counts


def cli_main(argv: list[str]) -> int:
  """`mpc-jax synth --out DIR --num N [--seed S] [--size PX] [--difficulty D] [--authentic-prob P]`."""
  p = argparse.ArgumentParser(
    prog="mpc-jax synth",
    description="Write a folder of synthetic forgeries (images/ + masks/, readable as a data spec).",
  )
  p.add_argument("--out", required=True, help="output folder (images/ and masks/ are created)")
  p.add_argument("--num", type=int, required=True, help="number of examples")
  d = SyntheticConfig()
  p.add_argument(
    "--seed", type=int, default=d.seed, help="random seed (example i uses [seed, i]; default %(default)s)"
  )
  p.add_argument("--size", type=int, default=d.size, help="image side in pixels (default %(default)s)")
  p.add_argument(
    "--difficulty",
    type=float,
    default=d.difficulty,
    help="0 = loud traces (demo) ... 1 = hard (default %(default)s)",
  )
  p.add_argument(
    "--authentic-prob",
    type=float,
    default=d.authentic_prob,
    help="fraction of authentic images (default %(default)s)",
  )
  from mpc_jax.main import add_common_args

  add_common_args(p)
  a = p.parse_args(argv)
  if a.num <= 0:
    p.error("--num must be positive")
  if a.size < 16:
    p.error("--size must be at least 16")
  if not 0 <= a.difficulty <= 1:
    p.error("--difficulty must be in [0, 1]")
  counts = write_dataset(
    a.out,
    a.num,
    a.seed,
    (a.size, a.size),
    difficulty=a.difficulty,
    authentic_prob=a.authentic_prob,
    progress=True,
  )
  print("synth: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {a.out}")
  return 0


# ------------------------------------------------------------------------------------------------------
# Hardness check: trivial detectors
# ------------------------------------------------------------------------------------------------------


def _otsu_f1(score: np.ndarray, gt: np.ndarray) -> float:
  s = cv2.normalize(score.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
  _, t = cv2.threshold(s, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
  pred = t > 0
  # oracle polarity: an upper bound for the detector
  return float(max(pixel_f1(pred, gt), pixel_f1(~pred, gt)))


def trivial_detector_f1(examples) -> dict[str, float]:
  """Mean pixel F1 over tampered examples of label-free detectors (oracle polarity, Otsu threshold):

  all_ones  -- everything tampered (the floor any detector must beat);
  colour    -- Lab distance to the image's median colour, smoothed ("a coloured region");
  edges     -- local gradient energy ("a visible boundary / different texture");
  noise     -- local high-pass residual energy (a noise-level mismatch: a real forensic trace).
  """
  res = {"all_ones": [], "colour": [], "edges": [], "noise": []}
  for ex in examples:
    gt = ex["mask"].astype(bool)
    if not gt.any():
      continue
    img = ex["image"]
    k = max(5, (min(gt.shape) // 24) | 1)
    res["all_ones"].append(float(pixel_f1(np.ones_like(gt), gt)))
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    dist = np.linalg.norm(lab - np.median(lab.reshape(-1, 3), 0), axis=-1)
    res["colour"].append(_otsu_f1(cv2.blur(dist, (k, k)), gt))
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    res["edges"].append(_otsu_f1(cv2.blur(np.sqrt(gx * gx + gy * gy), (k, k)), gt))
    r = g - cv2.medianBlur(g.astype(np.uint8), 3).astype(np.float32)
    res["noise"].append(_otsu_f1(np.log1p(cv2.blur(r * r, (k, k))), gt))
  return {k: float(np.mean(v)) if v else float("nan") for k, v in res.items()}
