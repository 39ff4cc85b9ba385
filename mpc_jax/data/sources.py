"""Random-access data sources (for grain and for plain indexing), built from spec strings.

Every source has `len(src)` and `src[i]`; a record is a dict
    {'image': uint8 [H, W, 3] RGB, 'mask': uint8 [H, W] in {0, 1} (zeros for authentic), 'path': str}.
`source_from_spec(spec)` reads every form of data (folders, file lists, TFDS, ArrayRecord shards, release
layouts, synthetic forgeries), so training, evaluation and `mpc-jax prepare` share one reader.

Bad examples (missing, corrupt or truncated files, a mask whose size differs from its image) follow
`on_bad_example`: `'raise'` raises `BadExampleError` naming the file; `'skip'` drops the example, counts it
(`src.num_bad`, `src.bad_examples`) and logs it with its path.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import csv
import functools
import json
import logging
import os
import threading
from typing import Any, Sequence

import numpy as np

from mpc_jax.data.io import (
  BadExampleError,
  binarize_mask,
  check_file_complete,
  decode_image_bytes,
  decode_mask_bytes,
  encode_mask_png,
  image_size,
  read_image,
  read_mask,
  to_uint8,
)

log = logging.getLogger(__name__)

__all__ = [
  "BadExampleError",
  "PairSource",
  "TfdsSource",
  "ReopenedSource",
  "MixtureSource",
  "WeightedSampleSource",
  "source_from_spec",
  "pairs_from_folder",
  "pairs_from_list",
  "IMAGE_EXTENSIONS",
  "ON_BAD_EXAMPLE",
  "CHECK_FILES",
  "mask_key",
  "decode_encoded",
  "raw_example",
  "MASK_MODES",
  "read_mask_mode",
  "check_policy",
  "BadCounter",
]
MASK_MODES = ("binary", "inverted", "nonzero", "columbia")

ON_BAD_EXAMPLE = ("raise", "skip")
CHECK_FILES = ("header", "full", "none")  # how thoroughly a file-backed source checks its files when built
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pnm")
_AUTHENTIC_TOKENS = {"", "none", "negative", "-", "null", "nan", "authentic"}
_MASK_SUFFIXES = ("_gt", "-gt", "_mask", "-mask", "_m", "_edgemask", "_groundtruth", "_label", ".mask")


def check_policy(on_bad_example: str) -> str:
  if on_bad_example not in ON_BAD_EXAMPLE:
    raise ValueError(f"on_bad_example must be one of {ON_BAD_EXAMPLE}, got {on_bad_example!r}")
  return on_bad_example


class BadCounter:
  """Counts and logs skipped examples (per process: grain workers keep their own counts)."""

  def __init__(self, name: str):
    self.name = name
    self.bad_examples: list[tuple[str, str]] = []
    self._lock = threading.Lock()

  def add(self, err: BadExampleError) -> None:
    with self._lock:
      self.bad_examples.append((err.path, err.reason))
      n = len(self.bad_examples)
    log.warning("data source %s: skipping bad example #%d: %s", self.name, n, err)

  def __getstate__(self):
    return {"name": self.name, "bad_examples": list(self.bad_examples)}

  def __setstate__(self, state):
    self.__init__(state["name"])
    self.bad_examples = state["bad_examples"]


class CountsBadExamples:
  """`bad_examples` and `num_bad` of a source that keeps a `BadCounter` in `self._counter`."""

  @property
  def bad_examples(self) -> list[tuple[str, str]]:
    """`(path, reason)` of every example skipped so far in this process."""
    return self._counter.bad_examples

  @property
  def num_bad(self) -> int:
    return len(self._counter.bad_examples)


class PairSource(CountsBadExamples):
  """Random-access source over `(image_path, mask_path_or_None)` pairs; `None` mask = authentic.

  Args:
    pairs: sequence of `(image_path, mask_path or None)`.
    on_bad_example: `'raise'` or `'skip'` (see the module docstring). The pairs are checked now (see
      `check_files`): cheap, and it keeps `len()` honest; a file that only fails at full decode fails when
      read, and `src[i]` returns `None` under `'skip'` (iterating `src`, or the grain pipeline, drops these).
    check_files: how thoroughly the files are checked now (`CHECK_FILES`): `'header'` (existence,
      header, complete file ending, mask size -- no full decode), `'full'` (decode everything) or `'none'`.
    name: for log messages.
    missing: extra `BadExampleError`s found while listing (e.g. unmatched folder files), reported
      under the same policy.
    mask_mode: how mask files code the tampered pixels (`MASK_MODES`): 'binary' (white, the default),
      'inverted' (black: NIST16, DSO-1), 'nonzero' (any non-black pixel: Korus' 3-level maps),
      'columbia' (Columbia's red/green edge-masks).
  Record: `{'image': uint8 [H, W, 3], 'mask': uint8 [H, W] {0,1}, 'path': str}`.
  """

  def __init__(
    self,
    pairs: Sequence[tuple[str, str | None]],
    *,
    on_bad_example: str = "raise",
    check_files: str = "header",
    name: str = "pairs",
    missing: Sequence[BadExampleError] = (),
    num_threads: int = 8,
    mask_mode: str = "binary",
  ):
    self.on_bad_example = check_policy(on_bad_example)
    if mask_mode not in MASK_MODES:
      raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    self.mask_mode = mask_mode
    if check_files not in CHECK_FILES:
      raise ValueError(f"check_files must be 'header', 'full' or 'none', got {check_files!r}")
    self.name = name
    self._counter = BadCounter(name)
    pairs = [(os.fspath(i), None if m is None else os.fspath(m)) for i, m in pairs]
    for err in missing:
      self._bad(err)
    if check_files != "none" and pairs:
      check = (
        functools.partial(_check_pair_full, mask_mode=mask_mode)
        if check_files == "full"
        else _check_pair_header
      )
      with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as ex:
        errors = list(ex.map(check, pairs))
      good = []
      for pair, err in zip(pairs, errors):
        if err is None:
          good.append(pair)
        else:
          self._bad(err)
      pairs = good
    self.pairs = pairs

  # -- bad-example policy --------------------------------------------------------------------------
  def _bad(self, err: BadExampleError) -> None:
    if self.on_bad_example == "raise":
      raise err
    self._counter.add(err)

  # -- random access ---------------------------------------------------------------------------------
  def __len__(self) -> int:
    return len(self.pairs)

  def load(self, index: int) -> dict[str, Any]:
    """Decode example `index`; always raises `BadExampleError` on failure (whatever the policy)."""
    img_path, mask_path = self.pairs[index]
    image = read_image(img_path)
    if mask_path is None:
      mask = np.zeros(image.shape[:2], np.uint8)
    else:
      mask = read_mask_mode(mask_path, self.mask_mode, expected_hw=image.shape[:2])
    return {"image": image, "mask": mask, "path": img_path}

  def raw(self, index: int) -> dict[str, Any]:
    """Example `index` as stored bytes, checked as `load` checks it (raises `BadExampleError`):
    `{'image_bytes': the file's bytes, 'mask_bytes': binary PNG (b'' = authentic), 'path': str}`."""
    img_path, mask_path = self.pairs[int(index)]
    err = _check_pair_header((img_path, mask_path))
    if err is not None:
      raise err
    with open(img_path, "rb") as f:
      data = f.read()
    image = decode_image_bytes(data, img_path)
    mask = (
      b""
      if mask_path is None
      else encode_mask_png(read_mask_mode(mask_path, self.mask_mode, expected_hw=image.shape[:2]))
    )
    return {"image_bytes": data, "mask_bytes": mask, "path": img_path}

  def __getitem__(self, index: int) -> dict[str, Any] | None:
    if not isinstance(index, (int, np.integer)):
      raise TypeError(f"index must be an int, got {type(index).__name__}")
    index = int(index)
    if index < 0:
      index += len(self)
    try:
      return self.load(index)
    except BadExampleError as err:
      self._bad(err)
      return None

  def __iter__(self):
    """Records in order; under `'skip'` the bad ones are left out."""
    for i in range(len(self)):
      rec = self[i]
      if rec is not None:
        yield rec

  def __repr__(self) -> str:
    return f"PairSource({self.name!r}, n={len(self)}, on_bad_example={self.on_bad_example!r})"


def read_mask_mode(path, mask_mode: str, expected_hw=None) -> np.ndarray:
  """A mask file as uint8 [H, W] {0, 1} under `mask_mode` (see `PairSource`)."""
  if mask_mode == "binary":
    return read_mask(path, expected_hw=expected_hw)
  if mask_mode == "inverted":
    mask = 1 - read_mask(path, expected_hw=expected_hw)
  else:
    rgb = read_image(path)
    if mask_mode == "nonzero":
      mask = (rgb.max(axis=2) > 0).astype(np.uint8)
    elif mask_mode == "columbia":  # red-ish = spliced region, green = authentic region
      mask = ((rgb[..., 0] > 127) & (rgb[..., 1] < 128)).astype(np.uint8)
    else:
      raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    if expected_hw is not None and mask.shape != tuple(int(v) for v in expected_hw[:2]):
      raise BadExampleError(
        path,
        f"mask size {mask.shape[0]}x{mask.shape[1]} differs from its image's "
        f"{int(expected_hw[0])}x{int(expected_hw[1])} (HxW)",
      )
  return np.ascontiguousarray(mask.astype(np.uint8))


def _check_pair_header(pair) -> BadExampleError | None:
  img_path, mask_path = pair
  try:
    check_file_complete(img_path)
    hw = image_size(img_path)
    if mask_path is not None:
      check_file_complete(mask_path)
      mhw = image_size(mask_path)
      if mhw != hw:
        return BadExampleError(
          mask_path,
          f"mask size {mhw[0]}x{mhw[1]} differs from its image's {hw[0]}x{hw[1]} (HxW) [image {img_path}]",
        )
  except BadExampleError as err:
    return err
  return None


def _check_pair_full(pair, mask_mode: str = "binary") -> BadExampleError | None:
  err = _check_pair_header(pair)
  if err is not None:
    return err
  try:
    image = read_image(pair[0])
    if pair[1] is not None:
      read_mask_mode(pair[1], mask_mode, expected_hw=image.shape[:2])
  except BadExampleError as e:
    return e
  return None


# ---------------------------------------------------------------------------------------------------
# Listing helpers
# ---------------------------------------------------------------------------------------------------


def _is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def mask_key(stem: str) -> str:
  """A mask's file stem without its suffix (`_gt`, `_mask`, `_edgemask`, ...): the image stem it matches."""
  low = stem.lower()
  for suf in _MASK_SUFFIXES:
    if low.endswith(suf) and len(low) > len(suf):
      return stem[: -len(suf)]
  return stem


def pairs_from_folder(
  images_dir, masks_dir, *, missing_mask: str = "bad"
) -> tuple[list[tuple[str, str | None]], list[BadExampleError]]:
  """Match `images_dir/*` and `masks_dir/*` by file stem (mask stems may end in `_gt`, `_mask`, ...).

  `missing_mask='bad'`: an image without a mask is a bad example (a missing file);
  `'authentic'`: it is taken as authentic (all-zero mask). A mask without an image is always bad.
  Returns `(pairs, errors)`; the unmatched files are also logged in one report.
  """
  images_dir, masks_dir = os.fspath(images_dir), os.fspath(masks_dir)
  for d in (images_dir, masks_dir):
    if not os.path.isdir(d):
      raise FileNotFoundError(f"folder not found: {d}")
  images = sorted(f for f in os.listdir(images_dir) if _is_image_file(f))
  masks = sorted(f for f in os.listdir(masks_dir) if _is_image_file(f))
  by_stem: dict[str, str] = {}
  for f in masks:
    stem = os.path.splitext(f)[0]
    by_stem.setdefault(stem, f)
  for f in masks:  # suffix-stripped stems as a second choice
    by_stem.setdefault(mask_key(os.path.splitext(f)[0]), f)
  pairs, errors, used = [], [], set()
  no_mask = []
  for f in images:
    m = by_stem.get(os.path.splitext(f)[0])
    if m is None:
      no_mask.append(f)
      if missing_mask == "authentic":
        pairs.append((os.path.join(images_dir, f), None))
      else:
        errors.append(
          BadExampleError(
            os.path.join(masks_dir, os.path.splitext(f)[0] + ".*"),
            f"file not found: no mask for image {os.path.join(images_dir, f)}",
          )
        )
      continue
    used.add(m)
    pairs.append((os.path.join(images_dir, f), os.path.join(masks_dir, m)))
  no_image = [m for m in masks if m not in used]
  for m in no_image:
    errors.append(
      BadExampleError(
        os.path.join(images_dir, mask_key(os.path.splitext(m)[0]) + ".*"),
        f"file not found: no image for mask {os.path.join(masks_dir, m)}",
      )
    )
  if no_mask or no_image:
    log.warning(
      "folder pair %s | %s: %d matched, %d image(s) without a mask%s, %d mask(s) without an image%s",
      images_dir,
      masks_dir,
      len(pairs) - (len(no_mask) if missing_mask == "authentic" else 0),
      len(no_mask),
      f" (e.g. {no_mask[:3]})" if no_mask else "",
      len(no_image),
      f" (e.g. {no_image[:3]})" if no_image else "",
    )
  return pairs, errors


def _resolve(p: str, base: str) -> str:
  p = os.path.expanduser(p.strip())
  if os.path.isabs(p):
    return p
  cand = os.path.join(base, p)
  if os.path.exists(cand) or not os.path.exists(p):
    return cand
  return p


def _mask_or_none(m) -> str | None:
  if m is None:
    return None
  if isinstance(m, bytes):
    m = m.decode("utf-8")
  m = str(m).strip()
  return None if m.lower() in _AUTHENTIC_TOKENS else m


def pairs_from_list(path) -> list[tuple[str, str | None]]:
  """Read a `.txt`/`.csv`/`.npy`/`.json` list of `(image, mask_or_authentic)` pairs."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"file list not found: {path}")
  base = os.path.dirname(os.path.abspath(path))
  ext = os.path.splitext(path)[1].lower()
  raw: list[tuple[Any, Any]] = []
  if ext == ".npy":
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 1:
      raw = [(x, None) for x in arr.tolist()]
    elif arr.ndim == 2 and arr.shape[1] >= 2:
      raw = [(r[0], r[1]) for r in arr.tolist()]
    else:
      raise ValueError(f"{path}: expected an array of shape [N, 2] (image, mask), got {arr.shape}")
  elif ext == ".json":
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if isinstance(data, dict):
      data = data.get("data", data.get("items", list(data.values())))
    for i, item in enumerate(data):
      if isinstance(item, dict):
        raw.append((item.get("image", item.get("img")), item.get("mask", item.get("gt"))))
      elif isinstance(item, (list, tuple)) and len(item) >= 1:
        raw.append((item[0], item[1] if len(item) > 1 else None))
      elif isinstance(item, str):
        raw.append((item, None))
      else:
        raise ValueError(f"{path}: entry {i} is not [image, mask]: {item!r}")
  else:
    with open(path, encoding="utf-8", newline="") as f:
      lines = f.read().splitlines()
    rows = []
    for line in lines:
      if not line.strip() or line.lstrip().startswith("#"):
        continue
      if "," in line or ext == ".csv":
        rows.append(next(csv.reader([line])))
      elif "\t" in line:
        rows.append(line.split("\t"))
      else:
        parts = line.rsplit(None, 1)
        rows.append(parts if len(parts) == 2 and not os.path.exists(_resolve(line, base)) else [line])
    if rows and rows[0] and rows[0][0].strip().lower() in ("image", "img", "image_path", "path", "input"):
      rows = rows[1:]
    raw = [(r[0], r[1] if len(r) > 1 else None) for r in rows]
  pairs = []
  for img, m in raw:
    if isinstance(img, bytes):
      img = img.decode("utf-8")
    m = _mask_or_none(m)
    pairs.append((_resolve(str(img), base), None if m is None else _resolve(m, base)))
  return pairs


def decode_encoded(image_bytes: bytes, mask_bytes: bytes, path: str) -> dict[str, Any]:
  """A record from encoded bytes, decoded exactly as the files would be (`read_image` / `read_mask`).

  `mask_bytes` empty = authentic (zero mask). Raises `BadExampleError` naming `path`.
  Returns `{'image': uint8 [H, W, 3], 'mask': uint8 [H, W] {0,1}, 'path': path}`.
  """
  image = decode_image_bytes(image_bytes, path)
  mask = (
    decode_mask_bytes(mask_bytes, path + " (mask)", expected_hw=image.shape[:2])
    if len(mask_bytes)
    else np.zeros(image.shape[:2], np.uint8)
  )
  return {"image": image, "mask": mask, "path": path}


def raw_example(source, index: int) -> dict[str, Any]:
  """Example `index` of any source as `{'image_bytes', 'mask_bytes', 'path'}`.

  Sources with a `raw` method keep the original encoded image (file bytes); others (synthetic, decoded
  TFDS features) are encoded as lossless PNG. The mask is a binary PNG, b'' for an all-zero mask.
  Raises `BadExampleError` for an unusable example.
  """
  if hasattr(source, "raw"):
    return source.raw(index)
  return _png_example(source, index)


def _png_example(source, index: int) -> dict[str, Any]:
  """`raw_example` for sources that hold decoded arrays: the image as lossless PNG."""
  rec = source.load(index) if hasattr(source, "load") else source[index]
  if rec is None:
    bad = getattr(source, "bad_examples", None)
    raise BadExampleError(bad[-1][0] if bad else f"example {index}", bad[-1][1] if bad else "unreadable")
  import cv2

  ok, buf = cv2.imencode(".png", np.ascontiguousarray(rec["image"][..., ::-1]))
  if not ok:
    raise BadExampleError(str(rec.get("path", index)), "cannot encode the image as PNG")
  return {
    "image_bytes": buf.tobytes(),
    "mask_bytes": encode_mask_png(rec["mask"]),
    "path": str(rec.get("path", f"example {index}")),
  }


# ---------------------------------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------------------------------


class ReopenedSource(CountsBadExamples):
  """Base of the sources that read through a handle opened on first use (`_open()`, reached through
  `_source()`). The handle is left out when the source is pickled to a grain worker process, which
  reopens it. Subclasses set `self._len` and `self._counter` (a `BadCounter`)."""

  _handle = None

  def _open(self):
    raise NotImplementedError

  def _source(self):
    if self._handle is None:
      self._handle = self._open()
    return self._handle

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_handle", None)
    return state

  def __len__(self) -> int:
    return self._len


class TfdsSource(ReopenedSource):
  """Random access over `tfds.data_source(name, split)` (array_record), as our records.

  Features used: either `image_bytes` / `mask_bytes` (encoded files, as our `data/` builders store them;
  empty mask bytes = authentic), or decoded `image` ([H, W, 3] or [H, W, 1] uint8) and `mask`
  ([H, W(, 1)], optional: zeros when absent); and a path-like string feature (`path`, `filename` or
  `image/filename`) when present.
  Masks are binarised at half their range ({0, 1}-valued masks are kept).
  """

  def __init__(
    self, name: str, split: str = "train", *, data_dir: str | None = None, on_bad_example: str = "raise"
  ):
    self.name, self.split = name, split
    self.data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    self.on_bad_example = check_policy(on_bad_example)
    self._counter = BadCounter(f"tfds:{name}:{split}")
    self._len = len(self._source())

  def _open(self):
    import tensorflow_datasets as tfds

    kw = {"data_dir": self.data_dir} if self.data_dir else {}
    return tfds.data_source(self.name, split=self.split, **kw)

  def _example(self, index: int):
    ex = self._source()[int(index)]
    path = ""
    for key in ("path", "filename", "image/filename", "file_name"):
      if key in ex:
        v = ex[key]
        path = v.decode("utf-8") if isinstance(v, bytes) else str(v)
        break
    return ex, path or f"tfds:{self.name}:{self.split}[{int(index)}]"

  def raw(self, index: int) -> dict[str, Any]:
    """Example `index` as bytes (`image_bytes` kept as stored; decoded-feature sets re-encoded as
    lossless PNG), checked by decoding; raises `BadExampleError`."""
    ex, path = self._example(index)
    if "image_bytes" in ex:
      data, mb = bytes(ex["image_bytes"]), bytes(ex.get("mask_bytes", b""))
      rec = decode_encoded(data, mb, path)
      return {
        "image_bytes": data,
        "mask_bytes": encode_mask_png(rec["mask"]) if len(mb) else b"",
        "path": path,
      }
    return _png_example(self, index)

  def __getitem__(self, index: int):
    index = int(index)
    ex, path = self._example(index)
    try:
      if "image_bytes" in ex:  # our builders keep the original encoded file (forensically exact)
        return decode_encoded(bytes(ex["image_bytes"]), bytes(ex.get("mask_bytes", b"")), path)
      image = np.asarray(ex["image"])
      if image.ndim == 2:
        image = image[:, :, None]
      if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
      elif image.shape[-1] == 4:
        image = image[..., :3]
      if image.dtype != np.uint8:
        image = to_uint8(image)
      if "mask" in ex and ex["mask"] is not None:
        m = np.asarray(ex["mask"])
        if m.ndim == 3:
          m = m[..., 0] if m.shape[-1] == 1 else m.max(-1)
        mask = m.astype(np.uint8) if m.max(initial=0) <= 1 else binarize_mask(m)
        if mask.shape != image.shape[:2]:
          raise BadExampleError(path, f"mask size {mask.shape} differs from its image's {image.shape[:2]}")
      else:
        mask = np.zeros(image.shape[:2], np.uint8)
    except BadExampleError as err:
      if self.on_bad_example == "raise":
        raise
      self._counter.add(err)
      return None
    return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask), "path": path}

  def __iter__(self):
    for i in range(len(self)):
      rec = self[i]
      if rec is not None:
        yield rec


# ---------------------------------------------------------------------------------------------------
# Mixture with repeat weights (the reference: tampCOCO x1 + CASIAv2 x40 + IMD2020 x20)
# ---------------------------------------------------------------------------------------------------


class MixtureSource:
  """Concatenation of sources, source `i` repeated `weights[i]` times (the reference's repeat lists).

  A fractional weight `w` takes `floor(w)` full copies plus a fixed (seeded) random subset of
  `round(frac(w) * len)` records; `w = 0` drops the source. `len = sum(round(w_i * len_i))`.
  Shuffle downstream (the pipeline does). `source_index(i)` tells which source index `i` reads.
  """

  def __init__(
    self,
    sources: Sequence[Any],
    weights: Sequence[float] | None = None,
    *,
    seed: int = 0,
    names: Sequence[str] | None = None,
  ):
    if not sources:
      raise ValueError("MixtureSource needs at least one source")
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
      raise ValueError(f"got {len(sources)} sources but {len(weights)} weights")
    if any(w < 0 or not np.isfinite(w) for w in weights):
      raise ValueError(f"mixture weights must be finite and >= 0, got {weights}")
    self.sources = list(sources)
    self.weights = weights
    self.names = list(names) if names is not None else [repr(s) for s in sources]
    self._full, self._extra, counts = [], [], []
    for k, (src, w) in enumerate(zip(self.sources, weights)):
      n = len(src)
      full = int(np.floor(w))
      extra = int(round((w - full) * n))
      perm = np.random.default_rng([seed, k]).permutation(n)[:extra] if extra else np.zeros(0, np.int64)
      self._full.append(full * n)
      self._extra.append(perm)
      counts.append(full * n + extra)
    self.counts = counts
    self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if self._offsets[-1] == 0:
      raise ValueError("mixture is empty: every source is empty or has weight 0")

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def locate(self, index: int) -> tuple[int, int]:
    """(source number, index inside that source) of mixture index `index`."""
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"mixture index {index} out of range [0, {len(self)})")
    k = bisect.bisect_right(self._offsets, index) - 1
    local = index - int(self._offsets[k])
    n = len(self.sources[k])
    local = local % n if local < self._full[k] else int(self._extra[k][local - self._full[k]])
    return k, local

  def source_index(self, index: int) -> int:
    return self.locate(index)[0]

  def __getitem__(self, index: int):
    k, local = self.locate(index)
    return self.sources[k][local]

  @property
  def num_bad(self) -> int:
    return sum(getattr(s, "num_bad", 0) for s in self.sources)


class WeightedSampleSource:
  """An endless stream: draw `i` picks source k with probability `w_k / sum(w)`, then a uniform record.

  Random access and deterministic per index (`default_rng([seed, i])`); `len` is 2**62.
  """

  LENGTH = 2**62

  def __init__(self, sources: Sequence[Any], weights: Sequence[float], *, seed: int = 0):
    w = np.asarray([float(x) for x in weights], np.float64)
    if len(w) != len(sources) or not len(w) or (w < 0).any() or w.sum() <= 0 or not np.isfinite(w).all():
      raise ValueError(f"need one finite weight >= 0 per source with a positive sum, got {list(weights)}")
    keep = [k for k in range(len(w)) if w[k] > 0 and len(sources[k]) > 0]
    if not keep:
      raise ValueError("every source with a positive weight is empty")
    self.sources = [sources[k] for k in keep]
    self.cdf = np.cumsum(w[keep]) / w[keep].sum()
    self.seed = int(seed)

  def __len__(self) -> int:
    return self.LENGTH

  def locate(self, index: int) -> tuple[int, int]:
    rng = np.random.default_rng([self.seed, int(index)])
    u, v = rng.random(2)
    k = min(int(np.searchsorted(self.cdf, u, side="right")), len(self.sources) - 1)
    return k, int(v * len(self.sources[k]))

  def __getitem__(self, index: int):
    k, local = self.locate(index)
    return self.sources[k][local]


# ---------------------------------------------------------------------------------------------------
# Spec parsing
# ---------------------------------------------------------------------------------------------------


def unique_names(names):
  """`names` with repeats made distinct in order: `a, a, a` -> `a, a_2, a_3`."""
  out, seen = [], set()
  for name in names:
    base, k = name, 1
    while name in seen:
      k += 1
      name = f"{base}_{k}"
    seen.add(name)
    out.append(name)
  return out


def source_from_spec(
  spec: str, *, on_bad_example: str = "raise", check_files: str = "header", missing_mask: str = "bad"
):
  """Build a random-access source from a spec string.

  Args:
    spec: one of
      * a folder with `images/` and `masks/` sub-folders, or `IMAGES_DIR:MASKS_DIR` (matched by file stem;
        a mask stem may carry a suffix such as `_gt`, `_mask`, `_edgemask`; unmatched files are reported);
      * a `.txt` / `.csv` list of `image,mask` lines (an empty mask, `None`, `Negative` or `-` means
        authentic; relative paths are resolved against the list's folder, then the working directory),
        or the reference's `.npy` list of `(image, mask)` pairs;
      * an IMDL-BenCo `.json` (`[[image, mask_or_"Negative"], ...]`, or a list of `{'image', 'mask'}` dicts);
      * `tfds:NAME[:SPLIT]` (a TFDS `array_record` data source; `data_dir` from `$TFDS_DATA_DIR`);
      * `arrayrecord:DIR[:NAME]` (shards written by `mpc-jax prepare`; `NAME` picks one packed source);
      * `layout:NAME:ROOT` (a public release in its own folder layout, e.g.
        `layout:nist16:/data/NC2016_Test0613`; `mpc_jax.data.layouts`);
      * `synthetic:NUM[:SEED[:SIZE[:DIFFICULTY]]]` (in-memory synthetic forgeries, `mpc_jax.data.synthetic`).
    on_bad_example: `'raise'` (error naming the file) or `'skip'` (skip, count, log).
    check_files: file checks at construction: headers (`'header'`), full decode (`'full'`) or `'none'`.
    missing_mask: folder pairs only: an image without a mask is `'bad'` or `'authentic'`.
  Returns: a source with `len()` and `[i] -> {'image', 'mask', 'path'}`.
  """
  check_policy(on_bad_example)
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"data spec must be a non-empty string, got {spec!r}")
  spec = spec.strip()
  if spec.startswith("tfds:"):
    parts = spec.split(":")
    if len(parts) < 2 or not parts[1]:
      raise ValueError(f"tfds spec must be 'tfds:NAME[:SPLIT]', got {spec!r}")
    return TfdsSource(
      parts[1], parts[2] if len(parts) > 2 and parts[2] else "train", on_bad_example=on_bad_example
    )
  if spec.startswith("arrayrecord:"):
    from mpc_jax.data.arrayrecord import ArrayRecordSource, parse_spec

    directory, name = parse_spec(spec[len("arrayrecord:") :])
    if not directory:
      raise ValueError(f"arrayrecord spec must be 'arrayrecord:DIR[:NAME]', got {spec!r}")
    return ArrayRecordSource(directory, name, on_bad_example=on_bad_example)
  if spec.startswith("layout:"):
    from mpc_jax.data.layouts import layout_source

    parts = spec.split(":", 2)
    if len(parts) < 3 or not parts[1] or not parts[2]:
      raise ValueError(f"layout spec must be 'layout:NAME:ROOT', got {spec!r}")
    return layout_source(parts[1], parts[2], on_bad_example=on_bad_example, check_files=check_files)
  if spec.startswith("synthetic:"):
    from mpc_jax.data.synthetic import SyntheticConfig

    return SyntheticConfig.from_spec(spec).source()
  path = os.path.expanduser(spec)
  if os.path.isdir(path):
    images_dir, masks_dir = os.path.join(path, "images"), os.path.join(path, "masks")
    if not os.path.isdir(images_dir):
      raise FileNotFoundError(f"{path}: a folder spec needs an 'images/' sub-folder (and 'masks/')")
    if not os.path.isdir(masks_dir):
      raise FileNotFoundError(f"{path}: a folder spec needs a 'masks/' sub-folder next to 'images/'")
    pairs, errors = pairs_from_folder(images_dir, masks_dir, missing_mask=missing_mask)
    return PairSource(
      pairs, on_bad_example=on_bad_example, check_files=check_files, name=path, missing=errors
    )
  if os.path.isfile(path):
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".txt", ".csv", ".npy", ".json", ".lst", ".flist"):
      raise ValueError(f"{path}: unsupported list format {ext!r} (use .txt, .csv, .npy or .json)")
    return PairSource(
      pairs_from_list(path), on_bad_example=on_bad_example, check_files=check_files, name=path
    )
  if ":" in spec:
    images_dir, masks_dir = spec.split(":", 1)
    if os.path.isdir(os.path.expanduser(images_dir)):
      pairs, errors = pairs_from_folder(
        os.path.expanduser(images_dir), os.path.expanduser(masks_dir), missing_mask=missing_mask
      )
      return PairSource(
        pairs, on_bad_example=on_bad_example, check_files=check_files, name=spec, missing=errors
      )
  raise FileNotFoundError(
    f"data spec {spec!r} is not a folder (with images/ and masks/), IMAGES_DIR:MASKS_DIR, a .txt/.csv/.npy/"
    ".json list, tfds:NAME[:SPLIT], arrayrecord:DIR[:NAME] or synthetic:NUM[:SEED[:SIZE]]"
  )
