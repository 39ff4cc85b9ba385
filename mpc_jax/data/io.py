"""Image and mask decoding with one consistent policy for every mode and bit depth.

`read_image(path) -> uint8 [H, W, 3]` (RGB) and `read_mask(path, expected_hw=None) -> uint8 [H, W]` in {0, 1}
convert every mode and bit depth the same way, so an image and its mask always agree, and keep pixels as
stored, as the reference's `cv2.imread` does (alpha dropped, not composited: compositing would alter the
forensic traces). Every failure (missing file, unreadable, corrupt or truncated data, wrong mask size)
raises `BadExampleError`, a `ValueError` whose message and `.path` name the file.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Truncated files must fail loudly, never decode to half a grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Forensic images can be large (NIST, IMD2020); keep Pillow's bomb check but at a generous limit.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 16384 * 16384)

__all__ = [
  "BadExampleError",
  "read_image",
  "read_mask",
  "image_size",
  "check_file_complete",
  "decode_image_bytes",
  "decode_mask_bytes",
  "encode_mask_png",
  "to_uint8",
]


class BadExampleError(ValueError):
  """A file that cannot be used as a training/evaluation example. `.path` names the file."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


_PNG_END = b"IEND\xaeB`\x82"


def check_file_complete(path) -> None:
  """Cheap truncation check from the file's last bytes (PNG must end with IEND, JPEG with EOI).

  Raises `BadExampleError` for a missing, empty or visibly truncated file; other formats pass.
  """
  path = os.fspath(path)
  try:
    size = os.path.getsize(path)
    if size == 0:
      raise BadExampleError(path, "empty file")
    with open(path, "rb") as f:
      head = f.read(8)
      f.seek(max(0, size - 4096))
      tail = f.read()
  except FileNotFoundError:
    raise BadExampleError(path, "file not found") from None
  except IsADirectoryError:
    raise BadExampleError(path, "is a directory, not a file") from None
  except OSError as e:
    raise BadExampleError(path, f"cannot read file ({e})") from None
  if head.startswith(b"\x89PNG\r\n\x1a\n"):
    if _PNG_END not in tail[-64:]:
      raise BadExampleError(path, "truncated PNG (no IEND chunk at the end)")
  elif head.startswith(b"\xff\xd8"):
    # Some writers pad after the EOI marker; accept a marker within the last 4 KiB.
    if b"\xff\xd9" not in tail:
      raise BadExampleError(path, "truncated JPEG (no end-of-image marker)")


def _is_deep_colour_png(path) -> bool:
  """16-bit RGB(A) PNG: Pillow would truncate it to the high byte, so OpenCV decodes it instead."""
  with open(path, "rb") as f:
    head = f.read(26)
  return (
    len(head) == 26
    and head.startswith(b"\x89PNG\r\n\x1a\n")
    and head[12:16] == b"IHDR"
    and head[24] == 16
    and head[25] in (2, 6)
  )


def _open(path) -> Image.Image:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise BadExampleError(path, "file not found")
  if os.path.isdir(path):
    raise BadExampleError(path, "is a directory, not a file")
  if _is_deep_colour_png(path):
    check_file_complete(path)
    return None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      img = Image.open(path)
      img.load()
      img = ImageOps.exif_transpose(img)
  except UnidentifiedImageError:
    return None  # let the OpenCV fallback try (e.g. some TIFF/EXR variants)
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
    if path.lower().endswith((".tif", ".tiff")):
      return None  # Pillow lacks some TIFF layouts (16-bit RGB); OpenCV may read them
    raise BadExampleError(path, f"corrupt or truncated image ({e})") from None
  return img


def _cv2_fallback(path) -> np.ndarray:
  """Decode with OpenCV keeping depth/channels (BGR -> RGB). Raises BadExampleError if it fails."""
  data = np.fromfile(os.fspath(path), dtype=np.uint8)
  return _cv2_decode(data, path, "not a readable image file")


def _cv2_decode(data: np.ndarray, name, reason: str) -> np.ndarray:
  """OpenCV decode of encoded bytes keeping depth (BGR -> RGB, alpha dropped, 1-2 channels -> 2-D)."""
  import cv2

  arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
  if arr is None:
    raise BadExampleError(name, reason)
  if arr.ndim == 3 and arr.shape[2] >= 3:
    arr = np.ascontiguousarray(arr[..., [2, 1, 0]])  # drop alpha, BGR -> RGB
  elif arr.ndim == 3 and arr.shape[2] in (1, 2):
    arr = arr[..., 0]
  return arr


def to_uint8(arr: np.ndarray, mode: str | None = None) -> np.ndarray:
  """Scale any integer/float array to uint8 from its nominal value range."""
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == np.bool_:
    return arr.astype(np.uint8) * 255
  if np.issubdtype(arr.dtype, np.floating):
    a = np.nan_to_num(arr.astype(np.float64))
    scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
  a = arr.astype(np.int64)
  if arr.dtype == np.uint16 or arr.dtype == np.int16 or a.max(initial=0) <= 65535:
    # 16-bit (Pillow 'I;16*' and 16-bit PNGs opened as 'I')
    return np.clip((a * 255 + 32767) // 65535, 0, 255).astype(np.uint8)
  return np.clip((a * 255) // 4294967295, 0, 255).astype(np.uint8)


def _pil_to_array(img: Image.Image, path) -> np.ndarray:
  """uint8 [H, W] or [H, W, 3] from any Pillow mode, alpha dropped."""
  mode = img.mode
  if mode == "1":
    return np.asarray(img, dtype=np.uint8) * 255
  if mode in ("L", "RGB"):
    return np.asarray(img, dtype=np.uint8)
  if mode == "LA":
    return np.asarray(img.getchannel("L"), dtype=np.uint8)
  if mode == "RGBA" or mode == "RGBa" or mode == "RGBX":
    return np.asarray(img, dtype=np.uint8)[..., :3]
  if mode in ("P", "PA"):
    return np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., :3]
  if mode.startswith("I;16") or mode == "I" or mode == "F":
    return to_uint8(np.asarray(img), mode)
  try:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
  except Exception as e:  # noqa: BLE001 - any conversion failure makes the example unusable
    raise BadExampleError(path, f"unsupported image mode {mode!r} ({e})") from None


def _read_any(path) -> np.ndarray:
  img = _open(path)
  if img is None:
    arr = _cv2_fallback(path)
    return to_uint8(arr) if arr.dtype != np.uint8 else arr
  return _pil_to_array(img, path)


def read_image(path) -> np.ndarray:
  """Decode an image file to RGB `uint8 [H, W, 3]`.

  Grayscale (`L`, `1`, `I`, `I;16`, `F`) is replicated to 3 channels; RGBA / LA / PA lose their alpha
  channel; palette images are expanded through their palette; CMYK / YCbCr are converted by Pillow.
  16-bit data is scaled to 8 bit by `round(v / 257)` (65535 -> 255); 32-bit integer / float data from
  its value range ([0, 1] for floats whose max is <= 1, else [0, 255] for floats, [0, 65535] for `I`).
  EXIF orientation is applied (as `cv2.imread` does by default).
  Raises `BadExampleError` (naming the file) for missing, corrupt, truncated or empty files.
  """
  arr = _read_any(path)
  if arr.ndim == 2:
    arr = np.repeat(arr[:, :, None], 3, axis=2)
  if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise BadExampleError(path, f"unexpected decoded shape {arr.shape}")
  return np.ascontiguousarray(arr)


def binarize_mask(arr: np.ndarray) -> np.ndarray:
  """uint8 [H, W] in {0, 1} from any decoded mask array, thresholded at half its value range."""
  if arr.ndim == 3:
    arr = arr.max(axis=2)
  if arr.dtype == np.bool_:
    return arr.astype(np.uint8)
  if arr.dtype == np.uint8:
    if arr.max(initial=0) == 1:  # a {0, 1}-coded 8-bit mask: thresholding at 127 would erase it
      return arr.astype(np.uint8)
    return (arr > 127).astype(np.uint8)
  if np.issubdtype(arr.dtype, np.floating):
    a = np.nan_to_num(arr)
    half = 0.5 if a.max(initial=0.0) <= 1.0 else 127.5
    return (a > half).astype(np.uint8)
  a = arr.astype(np.int64)
  half = 32767 if a.max(initial=0) <= 65535 else 2147483647
  return (a > half).astype(np.uint8)


def read_mask(path, expected_hw=None) -> np.ndarray:
  """Decode a ground-truth mask to `uint8 [H, W]` in {0, 1} (1 = tampered).

  Any mode and bit depth is accepted (converted as `read_image` converts; grayscale used as is) and
  binarised at half its value range: 1 where > 127 (8 bit), > 32767 (16 bit) or > 0.5 (float in [0, 1]);
  colour masks use the maximum over the colour channels. One exception: an 8-bit mask whose maximum is
  exactly 1 is taken as {0, 1}-coded (kept, not erased).
  `expected_hw=(H, W)` (the image's size): a mask of another size raises `BadExampleError`.
  """
  img = _open(path)
  if img is None:
    arr = _cv2_fallback(path)
  elif img.mode == "1":
    arr = np.asarray(img, dtype=bool)
  elif img.mode.startswith("I;16") or img.mode in ("I", "F"):
    arr = np.asarray(img)
  else:
    arr = _pil_to_array(img, path)
  if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise BadExampleError(path, f"unexpected decoded mask shape {arr.shape}")
  mask = binarize_mask(arr)
  if expected_hw is not None and tuple(mask.shape[:2]) != tuple(int(v) for v in expected_hw[:2]):
    raise BadExampleError(
      path,
      f"mask size {mask.shape[0]}x{mask.shape[1]} differs from its image's "
      f"{int(expected_hw[0])}x{int(expected_hw[1])} (HxW)",
    )
  return np.ascontiguousarray(mask)


def image_size(path) -> tuple[int, int]:
  """(H, W) from the file header only (no full decode), EXIF orientation applied.

  Raises `BadExampleError` for a missing or unidentifiable file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise BadExampleError(path, "file not found")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      with Image.open(path) as img:
        w, h = img.size
        try:
          orient = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - broken EXIF: ignore orientation
          orient = 1
  except UnidentifiedImageError:
    arr = _cv2_fallback(path)
    return int(arr.shape[0]), int(arr.shape[1])
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
    raise BadExampleError(path, f"corrupt image header ({e})") from None
  if orient in (5, 6, 7, 8):
    h, w = w, h
  return int(h), int(w)


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
  """Decode encoded bytes exactly as `_read_any` / `read_mask` decode the same file."""
  import io as _io

  if not data:
    raise BadExampleError(name, "empty file")
  head = data[:26]
  deep = (
    head.startswith(b"\x89PNG\r\n\x1a\n")
    and len(head) == 26
    and head[12:16] == b"IHDR"
    and head[24] == 16
    and head[25] in (2, 6)
  )
  tiff = head[:4] in (b"II*\x00", b"MM\x00*")
  if not deep:
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(_io.BytesIO(data))
        img.load()
        img = ImageOps.exif_transpose(img)
      if img.mode.startswith("I;16") or img.mode in ("I", "F", "1"):
        return np.asarray(img) if img.mode != "1" else np.asarray(img, dtype=bool)
      return _pil_to_array(img, name)
    except UnidentifiedImageError:
      pass
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
      if not tiff:  # Pillow lacks some TIFF layouts (16-bit RGB); OpenCV may read them
        raise BadExampleError(name, f"corrupt or truncated image ({e})") from None
  return _cv2_decode(np.frombuffer(data, np.uint8), name, "not a readable image")


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
  """`read_image` for an encoded file held in memory (e.g. a TFDS record): uint8 [H, W, 3]."""
  arr = _decode_bytes(data, name)
  if arr.dtype != np.uint8:
    arr = to_uint8(arr)
  if arr.ndim == 2:
    arr = np.repeat(arr[:, :, None], 3, axis=2)
  if arr.ndim != 3 or arr.shape[2] != 3:
    raise BadExampleError(name, f"unexpected decoded shape {arr.shape}")
  return np.ascontiguousarray(arr)


def decode_mask_bytes(data: bytes, name: str = "<bytes>", expected_hw=None) -> np.ndarray:
  """`read_mask` for an encoded file held in memory: uint8 [H, W] in {0, 1}."""
  mask = binarize_mask(_decode_bytes(data, name))
  if expected_hw is not None and tuple(mask.shape[:2]) != tuple(int(v) for v in expected_hw[:2]):
    raise BadExampleError(
      name,
      f"mask size {mask.shape[0]}x{mask.shape[1]} differs from its image's "
      f"{int(expected_hw[0])}x{int(expected_hw[1])} (HxW)",
    )
  return np.ascontiguousarray(mask)


def encode_mask_png(mask01: np.ndarray) -> bytes:
  """Binary mask uint8/bool [H, W] -> PNG bytes (0/255); b'' when nothing is set (authentic)."""
  import cv2

  mask01 = np.asarray(mask01)
  if not mask01.any():
    return b""
  ok, buf = cv2.imencode(".png", (mask01 > 0).astype(np.uint8) * 255)
  if not ok:
    raise ValueError(f"cannot encode a mask of shape {mask01.shape} as PNG")
  return buf.tobytes()
