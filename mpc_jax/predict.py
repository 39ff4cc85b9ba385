"""Forgery maps for images of any size: `mpc-jax predict`, and `predict_arrays` / `predict_paths` for notebooks.

Each input gives `<stem>_prob.png` (probability x 255, 8 bit, at the input's size), `<stem>_mask.png`
(0/255: `prob > threshold`) and `<stem>_overlay.jpg` (mask in red over the image), one line
`path<TAB>score` on stdout (score = max of the map) and a row of `scores.csv`. Unreadable files are
reported on stderr by name and the others still processed; exit status 1 when any failed. By default an
image is resized to the size the model was trained at, as in the paper, so any size costs one forward
pass; `PredictConfig` says how images are run (`mpc-jax eval` uses the same flags and defaults).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import queue
import sys
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from mpc_jax.data.sources import IMAGE_EXTENSIONS

MIN_SIDE = 16
DEFAULT_SIZE = 512  # the paper's input size: resize mode for models whose training size is unknown
PROGRAMS = ("auto", "whole", "pieces")
PIECES_UP_TO = 8  # 'auto' runs at most this many images in pieces (see PredictConfig)
BUCKETS = (32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


@dataclasses.dataclass
class PredictConfig:
  """How images are fed to the model (`mpc-jax predict` and `eval` take these as flags).

  `mode='resize'` (default): the reference protocol, as the model was trained: resize to `size x size`
  (bilinear, on uint8), predict, upsample the 1/4-res map to the input's size. `size=None` is the input
  size the model was trained at (`training.input_size` in its `model_config.json`, see
  `mpc_jax.checkpoint`), 512 (the paper's) when unknown.
  `mode='native'`: at the input's own resolution. Each side is padded (reflect) up to a bucket size
  (`BUCKETS`, at most 1.5x), so a folder of mixed sizes compiles a handful of programs. A side longer
  than `tile` is cut into `tile`-long windows with >= `overlap` px of overlap at 32-px-aligned offsets,
  blended with a linear ramp at 1/4 resolution (`large='tile'`), or the image is downscaled so its long
  side is `tile` (`large='downscale'`). Tiling is exact for a local model; HRFormer's windowed attention
  sees less context in a tile, so tiled maps differ from untiled ones (tests/test_predict.py bounds the
  difference); larger tiles and overlaps reduce this.
  The 1/4-res map is upsampled with cv2 bilinear (half-pixel centres). Same-shape inputs/tiles are
  batched, padded to a power of two <= `batch_size`, so each shape compiles at most log2(batch)+1 programs.
  `programs`: how the model is compiled per input shape. 'whole': one program, the fastest per image;
  'pieces': in pieces (`mpc_jax.models.pieces`), less to compile but each image slower (HRT-base at
  512 on 2 CPU cores: 3.1 s against 4.9 s of XLA compile, 1.3 s against 1.2 s per image);
  'auto': pieces for runs of at most `PIECES_UP_TO` images, where the compile dominates, the whole
  program otherwise.
  """

  mode: str = "resize"  # 'resize' | 'native'
  size: int | None = None  # resize mode: the square input size (None: the model's training size)
  tile: int = 1024  # native mode: longest side processed in one piece (multiple of 32)
  overlap: int = 128  # native mode: minimum overlap of neighbouring tiles (px; at most tile/2)
  large: str = "tile"  # native mode, sides > tile: 'tile' | 'downscale'
  threshold: float = 0.5  # mask = prob > threshold
  batch_size: int = 4
  programs: str = "auto"  # 'auto' | 'whole' | 'pieces'

  def check(self) -> "PredictConfig":
    """`self`, after raising `ValueError` on a bad field."""
    if self.mode not in ("native", "resize"):
      raise ValueError(f"mode must be 'native' or 'resize', got {self.mode!r}")
    if self.large not in ("tile", "downscale"):
      raise ValueError(f"large must be 'tile' or 'downscale', got {self.large!r}")
    if self.tile < 64 or self.tile % 32:
      raise ValueError(f"tile must be a multiple of 32 and >= 64, got {self.tile}")
    if self.overlap < 0:
      raise ValueError(f"overlap must be >= 0, got {self.overlap}")
    if self.size is not None and self.size < 32:
      raise ValueError(f"size must be >= 32, got {self.size}")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if self.programs not in PROGRAMS:
      raise ValueError(f"programs must be one of {PROGRAMS}, got {self.programs!r}")
    return self

  def for_images(self, n: int) -> "PredictConfig":
    """`self` with `programs='auto'` decided for a run of `n` images."""
    if self.programs != "auto":
      return self
    return dataclasses.replace(self, programs="pieces" if n <= PIECES_UP_TO else "whole")


# ------------------------------------------------------------------------------------------ forward
def _probabilities(model, x):
  """`[B, H, W, 3] -> [B, h, w]` float32 probabilities of `model` as it is set."""
  import jax

  return jax.nn.sigmoid(model(x)[..., 0].astype("float32"))


def _eval_probabilities(model, x):
  """`_probabilities` in eval mode, set on the traced copy (BN running statistics, no drop path; the
  caller's model is untouched)."""
  model.eval()
  return _probabilities(model, x)


def _whole_forward(model) -> Callable:
  """`f(x [B,H,W,3]) -> prob [B,h,w]`: `model`'s weights as they are now, one program per input shape
  (shared by models of one structure, stored for later processes: `models.pieces.program`)."""
  import jax
  from flax import nnx

  from mpc_jax.models import pieces

  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  by_shape: dict = {}

  def call(x):
    found = by_shape.get(x.shape)
    if found is None:
      found = by_shape[x.shape] = pieces.program(_eval_probabilities, (graphdef, treedef), leaves, x)
    return found(leaves, x)

  return call


def _piecewise_forward(model) -> Callable:
  """`f(x [B,H,W,3]) -> prob [B,h,w]` on an eval-mode copy of `model` run in pieces."""
  from flax import nnx

  from mpc_jax.models.layers import DropPath, Identity

  copy = nnx.merge(*nnx.split(model))
  copy.eval(pieces=True)
  # Drop path is the identity in eval mode. Identity in its place (whatever the rate, zero included)
  # makes blocks of one shape one structure, so every stage's branch i shares one program.
  for _, module in list(nnx.iter_modules(copy)):
    for name, value in list(vars(module).items()):
      if isinstance(value, DropPath):
        setattr(module, name, Identity())
  return lambda x: _probabilities(copy, x)


class Predictor:
  """Batched forward pass: float32 [N, H, W, 3] in [0, 1] -> probabilities [N, ceil(H/4), ceil(W/4)].

  `model`: an `MPC` nnx module (always run in eval mode; the weights are read when the Predictor is
  made), or any callable mapping a float32 [B, H, W, 3] batch to logits [B, h, w, 1] (for tests).
  `programs`: 'whole' (one program per shape, shared by models of one structure) or 'pieces' (see
  `PredictConfig`). Batches are padded to a power of two <= `batch_size`; `shapes` records the
  (B, H, W) shapes run.
  """

  def __init__(self, model, batch_size: int = 4, programs: str = "whole"):
    if programs not in ("whole", "pieces"):
      raise ValueError(f"programs must be 'whole' or 'pieces', got {programs!r}")
    self.batch_size = max(1, int(batch_size))
    self.shapes: set[tuple[int, int, int]] = set()
    self.model = model
    try:
      from flax import nnx

      is_module = isinstance(model, nnx.Module)
    except ImportError:  # pragma: no cover
      is_module = False
    if is_module and programs == "pieces":
      self._call = _piecewise_forward(model)
    elif is_module:
      self._call = _whole_forward(model)
    else:
      self._call = lambda x: 0.5 * (1.0 + np.tanh(0.5 * np.asarray(model(x), np.float32)[..., 0]))

  def _pad_batch(self, n: int) -> int:
    b = 1
    while b < n:
      b *= 2
    return min(b, self.batch_size) if n <= self.batch_size else self.batch_size

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    out = []
    for i in range(0, len(x), self.batch_size):
      chunk = x[i : i + self.batch_size]
      b = self._pad_batch(len(chunk))
      if b > len(chunk):
        chunk = np.concatenate([chunk, np.zeros((b - len(chunk),) + chunk.shape[1:], np.float32)])
      self.shapes.add(chunk.shape[:3])
      out.append(np.asarray(self._call(chunk), np.float32)[: min(self.batch_size, len(x) - i)])
    return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)


def as_predictor(model, batch_size: int = 4, programs: str = "whole") -> Predictor:
  """`model` itself when it is a Predictor, else a Predictor of it ('auto' programs: 'whole')."""
  if isinstance(model, Predictor):
    return model
  return Predictor(model, batch_size, "whole" if programs == "auto" else programs)


def trained_size(model) -> int | None:
  """The input size `model` (from `load_model`, or a Predictor of one) was trained at; None when unknown."""
  from mpc_jax.checkpoint import training_info

  size = training_info(model).get("input_size")
  return int(size) if size else None


def resolve_config(cfg: PredictConfig | None, model) -> PredictConfig:
  """`cfg` checked, with `size=None` replaced by the model's training size (`DEFAULT_SIZE` when unknown)."""
  cfg = (cfg or PredictConfig()).check()
  if cfg.size is None:
    cfg = dataclasses.replace(cfg, size=trained_size(model) or DEFAULT_SIZE)
  return cfg


# --------------------------------------------------------------------------------------------- plans
def bucket(n: int) -> int:
  """Smallest bucket size >= n (multiples of 1024 past the table)."""
  for b in BUCKETS:
    if b >= n:
      return b
  return int(math.ceil(n / 1024) * 1024)


def _ceil32(n: int) -> int:
  return int(math.ceil(n / 32) * 32)


def plan_axis(length: int, tile: int, overlap: int) -> tuple[int, int, list[int]]:
  """(padded length, window length, window offsets) along one axis of `length` px.

  Fits in one window (length <= tile): padded to `bucket(length)` (or to a multiple of 32 where the bucket
  would exceed the tile). Else: padded to a multiple of 32, windows of `tile` at 32-aligned offsets, the
  last one flush with the end, neighbours overlapping by >= `overlap` px (rounded up to 32)."""
  if length <= tile:
    b = bucket(length)
    b = b if b <= tile else _ceil32(length)
    return b, b, [0]
  padded = _ceil32(length)
  ov = _ceil32(overlap) if overlap > 0 else 0
  n = max(2, math.ceil((padded - ov) / (tile - ov)))
  while True:
    offs = [int(i * (padded - tile) / (n - 1)) // 32 * 32 for i in range(n)]
    offs[-1] = padded - tile
    if all(b - a <= tile - ov for a, b in zip(offs, offs[1:])):
      return padded, tile, offs
    n += 1


def _ramp(n: int, width: float) -> np.ndarray:
  i = np.arange(n, dtype=np.float32) + 0.5
  return np.clip(np.minimum(i, n - i) / max(width, 1.0), 1e-3, 1.0)


def to_float_image(image) -> np.ndarray:
  """uint8 / uint16 / float [H, W, 3] (or gray, or RGBA) -> float32 [H, W, 3] in [0, 1]; checks the size."""
  img = _as_rgb(image)
  check_size(img.shape[:2])
  return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img


def check_size(hw: Sequence[int]) -> None:
  """Rejects images with a side < MIN_SIDE (e.g. 1-px strips) with a message that says why."""
  h, w = int(hw[0]), int(hw[1])
  if min(h, w) < MIN_SIDE:
    raise ValueError(
      f"image is {h}x{w} (HxW) pixels: both sides must be at least {MIN_SIDE} px "
      "(the model sees 4x4-pixel cells and downsamples 32x); strips this thin are rejected"
    )


def _as_rgb(image) -> np.ndarray:
  """[H, W], [H, W, 1|3|4] uint8/uint16/float -> [H, W, 3] uint8 (kept) or float32 in [0, 1]."""
  img = np.asarray(image)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an image [H, W, 3], got shape {img.shape}")
  img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
  if img.dtype == np.uint8:
    return img
  if img.dtype == np.uint16:
    return img.astype(np.float32) / 65535.0
  return np.clip(img.astype(np.float32), 0.0, 1.0)


class _Job:
  """One image's plan: windows on a padded copy, and the 1/4-res blend accumulators."""

  def __init__(self, key, image, cfg: PredictConfig, out_hw=None):
    self.key = key
    img = _as_rgb(image)
    check_size(img.shape[:2])
    self.hw = tuple(int(v) for v in (out_hw if out_hw is not None else img.shape[:2]))
    self.scale = img.dtype == np.uint8
    self.direct = cfg.mode == "resize"  # reference: the 1/4 map is resized straight to the input size
    if self.direct:
      work = cv2.resize(img, (cfg.size, cfg.size), interpolation=cv2.INTER_LINEAR)
      hp, th, ys, wp, tw, xs = cfg.size, cfg.size, [0], cfg.size, cfg.size, [0]
    else:
      work = img
      if cfg.large == "downscale" and max(img.shape[:2]) > cfg.tile:
        s = cfg.tile / max(img.shape[:2])
        nh, nw = max(MIN_SIDE, round(img.shape[0] * s)), max(MIN_SIDE, round(img.shape[1] * s))
        work = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
      overlap = min(cfg.overlap, cfg.tile // 2)
      hp, th, ys = plan_axis(work.shape[0], cfg.tile, overlap)
      wp, tw, xs = plan_axis(work.shape[1], cfg.tile, overlap)
    self.work_hw = work.shape[:2]
    pad = ((0, hp - work.shape[0]), (0, wp - work.shape[1]), (0, 0))
    self.padded = np.pad(work, pad, mode="reflect") if (pad[0][1] or pad[1][1]) else work
    self.tile_hw = (th, tw)
    self.windows = [(y, x) for y in ys for x in xs]
    oh, ow = -(-th // 4), -(-tw // 4)
    self.acc = np.zeros((-(-hp // 4), -(-wp // 4)), np.float32)
    self.wsum = np.zeros_like(self.acc)
    if len(self.windows) > 1:
      ramp = min(cfg.overlap, cfg.tile // 2) / 4.0
      self.weight = np.outer(_ramp(oh, ramp), _ramp(ow, ramp))
    else:
      self.weight = np.ones((oh, ow), np.float32)

  def window(self, i: int) -> np.ndarray:
    y, x = self.windows[i]
    t = self.padded[y : y + self.tile_hw[0], x : x + self.tile_hw[1]]
    return t.astype(np.float32) / 255.0 if self.scale else t.astype(np.float32)

  def put(self, i: int, prob: np.ndarray) -> None:
    y, x = self.windows[i][0] // 4, self.windows[i][1] // 4
    h, w = prob.shape
    self.acc[y : y + h, x : x + w] += self.weight * prob
    self.wsum[y : y + h, x : x + w] += self.weight

  def result(self) -> np.ndarray:
    """prob [H, W] float32 at the input's size (or `out_hw`)."""
    low = self.acc / np.maximum(self.wsum, 1e-12)
    h, w = self.hw
    if self.direct:
      return cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
    full = cv2.resize(low, (low.shape[1] * 4, low.shape[0] * 4), interpolation=cv2.INTER_LINEAR)
    full = full[: self.work_hw[0], : self.work_hw[1]]
    if full.shape != (h, w):
      full = cv2.resize(full, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(full)


def predict_stream(
  model,
  items: Iterable[tuple[Any, Any]],
  cfg: PredictConfig | None = None,
  chunk_windows: int | None = None,
  progress: Callable[[float], Any] | None = None,
) -> Iterator[tuple[Any, Any]]:
  """Run many images, batching same-shape windows across images.

  `items`: iterable of `(key, image)` or `(key, image, out_hw)`; image is uint8/float [H, W, 3], or an
  Exception (passed through). Yields `(key, prob float32)` in input order, prob at `out_hw` (default the
  image's size), or `(key, Exception)` for an image that could not be run. Buffers up to `chunk_windows`
  windows (default 4 * batch_size) before running.
  `progress(n)` is called as work completes, `n` in images (a tile of an image cut in k counts 1/k)."""
  cfg = resolve_config(cfg, model)
  pred = as_predictor(model, cfg.batch_size, cfg.programs)
  chunk_windows = chunk_windows or 4 * pred.batch_size
  pending: list[_Job | tuple[Any, Exception]] = []
  n_windows = 0

  def flush():
    groups: dict[tuple[int, int], list[tuple[_Job, int]]] = {}
    for job in pending:
      if isinstance(job, _Job):
        for i in range(len(job.windows)):
          groups.setdefault(job.tile_hw, []).append((job, i))
    for refs in groups.values():
      for s in range(0, len(refs), pred.batch_size):
        part = refs[s : s + pred.batch_size]
        probs = pred(np.stack([job.window(i) for job, i in part]))
        for (job, i), p in zip(part, probs):
          job.put(i, p)
        if progress is not None:
          progress(sum(1 / len(job.windows) for job, _ in part))
    for job in pending:
      if isinstance(job, _Job):
        yield job.key, job.result()
      else:
        if progress is not None:
          progress(1)
        yield job
    pending.clear()

  for item in items:
    key, image = item[0], item[1]
    if isinstance(image, Exception):
      pending.append((key, image))
      continue
    try:
      job = _Job(key, image, cfg, item[2] if len(item) > 2 else None)
    except ValueError as e:
      pending.append((key, e))
      continue
    pending.append(job)
    n_windows += len(job.windows)
    if n_windows >= chunk_windows:
      yield from flush()
      n_windows = 0
  yield from flush()


def predict_arrays(model, image, cfg: PredictConfig | None = None, **kwargs) -> dict:
  """Predict one image. `image`: uint8 [H, W, 3] (or float in [0, 1]); `kwargs` override `cfg` fields.

  Returns dict(prob=float32 [H, W] in [0, 1], mask=uint8 [H, W] in {0, 1} (prob > threshold),
  score=float (max of prob)). Raises ValueError for an image too small (see `check_size`)."""
  cfg = resolve_config(dataclasses.replace(cfg or PredictConfig(), **kwargs), model).for_images(1)
  [(_, prob)] = list(predict_stream(model, [(0, image)], cfg))
  if isinstance(prob, Exception):
    raise prob
  return _finish(prob, cfg.threshold)


def _finish(prob: np.ndarray, threshold: float) -> dict:
  return dict(prob=prob, mask=(prob > threshold).astype(np.uint8), score=float(prob.max()))


# --------------------------------------------------------------------------------------------- files
def list_inputs(inputs: Sequence[str], recursive: bool = False) -> list[tuple[str, str]]:
  """Expand files and folders into `(path, relative output stem)`; a missing path is kept (and fails)."""
  out = []
  for inp in inputs:
    if os.path.isdir(inp):
      walker = os.walk(inp) if recursive else [(inp, [], sorted(os.listdir(inp)))]
      for root, dirs, files in walker:
        dirs.sort()
        for f in sorted(files):
          if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(root, f)):
            p = os.path.join(root, f)
            out.append((p, os.path.splitext(os.path.relpath(p, inp))[0]))
    else:
      out.append((inp, os.path.splitext(os.path.basename(inp))[0]))
  seen: dict[str, int] = {}
  result = []
  for p, stem in out:
    n = seen.get(stem, 0)
    seen[stem] = n + 1
    result.append((p, stem if n == 0 else f"{stem}_{n}"))
  return result


def _read(path: str) -> np.ndarray:
  from mpc_jax.data.io import read_image

  return read_image(path)


class _Raised:
  def __init__(self, error: BaseException):
    self.error = error


def prefetch(iterable: Iterable, size: int = 4) -> Iterator:
  """Iterate `iterable` in a background thread (decoding overlaps compute), keeping order."""
  q: queue.Queue = queue.Queue(maxsize=max(1, size))
  done = object()

  def worker():
    try:
      for item in iterable:
        q.put(item)
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
      q.put(_Raised(e))
    q.put(done)

  threading.Thread(target=worker, daemon=True).start()
  while True:
    item = q.get()
    if item is done:
      return
    if isinstance(item, _Raised):
      raise item.error
    yield item


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """uint8 [H, W, 3]: the image with the mask's pixels tinted red."""
  out = np.array(image, np.uint8)
  m = np.asarray(mask) > 0
  red = np.array([255.0, 0.0, 0.0], np.float32)
  out[m] = np.clip(out[m] * np.float32(1 - alpha) + red * np.float32(alpha), 0, 255).astype(np.uint8)
  return out


def write_outputs(out_dir: str, stem: str, image: np.ndarray, res: dict, with_overlay: bool = True) -> None:
  """Writes `<stem>_prob.png`, `<stem>_mask.png` and (optionally) `<stem>_overlay.jpg` under `out_dir`."""
  base = os.path.join(out_dir, stem)
  os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
  cv2.imwrite(base + "_prob.png", np.rint(res["prob"] * 255).astype(np.uint8))
  cv2.imwrite(base + "_mask.png", res["mask"] * np.uint8(255))
  if with_overlay:
    ov = overlay(image, res["mask"])
    cv2.imwrite(base + "_overlay.jpg", ov[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])


def predict_paths(
  model,
  paths: Sequence[str],
  cfg: PredictConfig | None = None,
  *,
  out_dir: str | None = None,
  recursive: bool = False,
  overlay_images: bool = True,
  keep_arrays: bool = True,
  progress: bool = False,
  **kwargs,
) -> list[dict]:
  """Predict files and folders. Returns one dict per input file, in order:

  `path`, `stem`, `ok` (bool), `error` (str, when not ok), `score`, `height`, `width`, and with
  `keep_arrays` `prob` [H, W] float32 and `mask` [H, W] uint8. With `out_dir` the PNG/JPEG outputs are
  written there (see `write_outputs`). Unreadable files do not stop the others."""
  cfg = resolve_config(dataclasses.replace(cfg or PredictConfig(), **kwargs), model)
  files = list_inputs(paths, recursive)
  cfg = cfg.for_images(len(files))
  images: dict[int, np.ndarray] = {}

  def items():
    for i, (p, _) in enumerate(files):
      try:
        img = _read(p)
      except Exception as e:  # noqa: BLE001 - reported per file
        yield i, e
        continue
      if out_dir is not None and overlay_images:
        images[i] = img
      yield i, img

  results = []
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(
      total=len(files),
      desc="predict",
      unit="img",
      file=sys.stderr,
      bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]",
    )
  for i, prob in predict_stream(model, prefetch(items()), cfg, progress=bar.update if bar else None):
    path, stem = files[i]
    if isinstance(prob, Exception):
      results.append(dict(path=path, stem=stem, ok=False, error=_describe(path, prob)))
      images.pop(i, None)
      continue
    res = _finish(prob, cfg.threshold)
    row = dict(path=path, stem=stem, ok=True, score=res["score"], height=prob.shape[0], width=prob.shape[1])
    if out_dir is not None:
      write_outputs(out_dir, stem, images.pop(i, None) if overlay_images else None, res, overlay_images)
    if keep_arrays:
      row.update(prob=res["prob"], mask=res["mask"])
    results.append(row)
  if bar is not None:
    bar.close()
  return results


def _describe(path: str, err: Exception) -> str:
  msg = str(err)
  return msg if path in msg else f"{path}: {msg}"


# ----------------------------------------------------------------------------------------------- CLI
def add_model_args(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--checkpoint",
    metavar="DIR",
    help="model folder from `mpc-jax convert` or training (WORKDIR/model_best), or a training workdir",
  )
  p.add_argument(
    "--random-init",
    metavar="PRESET",
    default=None,
    help="no checkpoint: a randomly initialised model of this HRFormer preset, e.g. hrt_tiny "
    "(smoke tests, speed)",
  )


def add_predict_args(p: argparse.ArgumentParser, defaults: PredictConfig, *aliases: str) -> None:
  p.add_argument(
    "--mode",
    *aliases,
    dest="mode",
    choices=["resize", "native"],
    default=defaults.mode,
    help="resize: to --size x --size, as the model was trained (the reference protocol); native: the "
    f"image's own resolution (bucketed padding, tiles above --tile) (default {defaults.mode})",
  )
  p.add_argument(
    "--size",
    type=int,
    default=defaults.size,
    help="resize mode: the square input size (default: the size the model was trained at, from its "
    f"model_config.json; {DEFAULT_SIZE} when unknown)",
  )
  p.add_argument(
    "--tile",
    type=int,
    default=defaults.tile,
    help="native mode: sides longer than this are tiled or downscaled (multiple of 32; default 1024)",
  )
  p.add_argument(
    "--overlap",
    type=int,
    default=defaults.overlap,
    help="minimum tile overlap in px, at most tile/2 (default 128)",
  )
  p.add_argument(
    "--large",
    choices=["tile", "downscale"],
    default=defaults.large,
    help="native mode, images larger than --tile: tile them (default) or downscale them",
  )
  p.add_argument("--threshold", type=float, default=defaults.threshold, help="mask = prob > threshold (0.5)")
  p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images/tiles per batch (4)")
  p.add_argument(
    "--programs",
    choices=PROGRAMS,
    default=defaults.programs,
    help=f"compile the model whole (fastest per image) or in pieces (less to compile); "
    f"auto: pieces for at most {PIECES_UP_TO} images (default {defaults.programs})",
  )


def load_model_from_args(args):
  if args.random_init:
    from mpc_jax.models import build_mpc

    model = build_mpc(args.random_init, seed=0)
    model.eval()
    return model
  if not args.checkpoint:
    from mpc_jax.main import UsageError

    raise UsageError("--checkpoint DIR is required (or --random-init PRESET for a smoke test)")
  from mpc_jax.checkpoint import load_model

  return load_model(args.checkpoint)


def config_from_args(args) -> PredictConfig:
  return PredictConfig(
    mode=args.mode,
    size=args.size,
    tile=args.tile,
    overlap=args.overlap,
    large=args.large,
    threshold=args.threshold,
    batch_size=args.batch_size,
    programs=args.programs,
  ).check()


def check_model_use(model, cfg: PredictConfig, prog: str) -> None:
  """Says on stderr when `model` is not run as it was trained (`cfg` as given, before `resolve_config`)."""
  from mpc_jax.checkpoint import training_info

  info = training_info(model)
  if not info.get("path"):
    return  # --random-init or a model not from load_model
  trained = info.get("input_size")
  if info.get("stage") == "stage1":
    print(
      f"{prog}: warning: {info['path']} is a stage-1 export: its localization head was never trained, "
      "so the maps mean nothing; use a stage-2 model (the model_best of a run with stage 2, or a "
      "converted *_stage2_weights.pth)",
      file=sys.stderr,
    )
  if cfg.mode == "native":
    if trained:
      print(
        f"{prog}: warning: --mode native runs each image at its own resolution; the model was trained "
        f"on images resized to {trained} px (--mode resize, the default, does that)",
        file=sys.stderr,
      )
  elif cfg.size is None and not trained:
    print(
      f"{prog}: note: the model's training size is not recorded in {info['path']}/model_config.json; "
      f"resizing to {DEFAULT_SIZE} px (the paper's); set --size otherwise",
      file=sys.stderr,
    )
  elif cfg.size is not None and trained and cfg.size != trained:
    print(
      f"{prog}: warning: the model was trained at {trained} px; running it at --size {cfg.size}",
      file=sys.stderr,
    )


def expand_inputs(inputs: Sequence[str], recursive: bool, prog: str) -> list[str]:
  """A folder with no images but an `images/` sub-folder (a dataset's layout) stands for that sub-folder."""
  out = []
  for inp in inputs:
    sub = os.path.join(inp, "images")
    if os.path.isdir(inp) and not recursive and not list_inputs([inp]) and os.path.isdir(sub):
      print(f"{prog}: {inp} holds no images; using {sub}", file=sys.stderr)
      inp = sub
    out.append(inp)
  return out


def cli_main(argv: Sequence[str] | None = None) -> int:
  """`mpc-jax predict`: exit 0 when every input was processed, 1 when some failed, 2 on usage errors."""
  from mpc_jax.main import add_common_args

  p = argparse.ArgumentParser(prog="mpc-jax predict", description=__doc__.split("\n\n")[0])
  p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
  p.add_argument("--out", required=True, help="output folder")
  add_model_args(p)
  add_predict_args(p, PredictConfig())
  p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
  p.add_argument("--no-overlay", action="store_true", help="do not write the overlay JPEGs")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  add_common_args(p)
  args = p.parse_args(argv)
  try:
    cfg = config_from_args(args)
  except ValueError as e:
    p.error(str(e))
  inputs = expand_inputs(args.inputs, args.recursive, p.prog)
  files = list_inputs(inputs, args.recursive)
  if not files:
    hint = ""
    if not args.recursive and list_inputs(inputs, recursive=True):
      hint = " (their sub-folders hold some: add --recursive)"
    print(f"{p.prog}: error: no image files found in {' '.join(inputs)}{hint}", file=sys.stderr)
    return 1
  model = load_model_from_args(args)
  check_model_use(model, cfg, p.prog)
  os.makedirs(args.out, exist_ok=True)
  rows = predict_paths(
    model,
    inputs,
    cfg,
    out_dir=args.out,
    recursive=args.recursive,
    overlay_images=not args.no_overlay,
    keep_arrays=False,
    progress=not args.no_progress,
  )
  failed = 0
  with open(os.path.join(args.out, "scores.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "score", "forged", "height", "width", "error"])
    for r in rows:
      if r["ok"]:
        print(f"{r['path']}\t{r['score']:.4f}", flush=True)
        w.writerow(
          [r["path"], f"{r['score']:.6f}", int(r["score"] > cfg.threshold), r["height"], r["width"], ""]
        )
      else:
        failed += 1
        print(f"mpc-jax predict: FAILED {r['error']}", file=sys.stderr, flush=True)
        w.writerow([r["path"], "", "", "", "", r["error"]])
  if failed:
    print(f"mpc-jax predict: {failed} of {len(rows)} inputs failed", file=sys.stderr)
  print(
    f"mpc-jax predict: wrote {len(rows) - failed} probability maps, masks"
    f"{'' if args.no_overlay else ' and overlays'} and scores.csv to {args.out}",
    file=sys.stderr,
  )
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(cli_main())
