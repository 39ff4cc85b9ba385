"""mpc_jax.data.io: every mode/bit depth and every broken-file case, on tiny files."""

import numpy as np
import pytest
from PIL import Image

from mpc_jax.data.io import BadExampleError, read_image, read_mask

H, W = 12, 10


def _rgb():
  return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_rgb_png_and_jpeg(tmp_path):
  a = _rgb()
  Image.fromarray(a).save(tmp_path / "a.png")
  np.testing.assert_array_equal(read_image(tmp_path / "a.png"), a)
  Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
  out = read_image(tmp_path / "a.jpg")
  assert out.shape == (H, W, 3) and out.dtype == np.uint8


def test_grayscale_rgba_palette_16bit(tmp_path):
  g = _rgb()[..., 0]
  Image.fromarray(g).save(tmp_path / "g.png")
  out = read_image(tmp_path / "g.png")
  assert out.shape == (H, W, 3) and (out == g[..., None]).all()

  a = _rgb()
  rgba = np.concatenate([a, np.full((H, W, 1), 7, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), a)  # alpha dropped, pixels kept

  Image.fromarray(a).convert("P", palette=Image.ADAPTIVE, colors=8).save(tmp_path / "p.png")
  out = read_image(tmp_path / "p.png")
  assert out.shape == (H, W, 3) and len(np.unique(out.reshape(-1, 3), axis=0)) <= 8

  g16 = (np.arange(H * W).reshape(H, W) * 500).astype(np.uint16)
  Image.fromarray(g16).save(tmp_path / "g16.png")
  out = read_image(tmp_path / "g16.png")
  np.testing.assert_array_equal(out[..., 0], np.round(g16 / 257).astype(np.uint8))

  import cv2

  c16 = (np.random.default_rng(1).integers(0, 65536, (H, W, 3))).astype(np.uint16)
  cv2.imwrite(str(tmp_path / "c16.png"), c16)  # BGR on disk
  out = read_image(tmp_path / "c16.png")
  np.testing.assert_array_equal(out, np.round(c16[..., ::-1] / 257).astype(np.uint8))


def test_mask_binarised_at_half_range_any_mode(tmp_path):
  v = np.array([[0, 127, 128, 255]] * 3, np.uint8)
  Image.fromarray(v).save(tmp_path / "m.png")
  np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), (v > 127).astype(np.uint8))
  Image.fromarray(np.repeat(v[..., None], 3, -1)).save(tmp_path / "m3.jpg", quality=100)
  np.testing.assert_array_equal(read_mask(tmp_path / "m3.jpg"), (v > 127).astype(np.uint8))
  v16 = np.array([[0, 32767, 32768, 65535]] * 3, np.uint16)
  Image.fromarray(v16).save(tmp_path / "m16.png")
  np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), (v16 > 32767).astype(np.uint8))
  Image.fromarray(v > 127).save(tmp_path / "m1.png")  # mode '1'
  np.testing.assert_array_equal(read_mask(tmp_path / "m1.png"), (v > 127).astype(np.uint8))
  rgba = np.zeros((3, 4, 4), np.uint8)
  rgba[..., :3] = v[..., None]
  Image.fromarray(rgba, "RGBA").save(tmp_path / "mrgba.png")
  np.testing.assert_array_equal(read_mask(tmp_path / "mrgba.png"), (v > 127).astype(np.uint8))
  red = np.zeros((3, 4, 3), np.uint8)
  red[:, 2:, 0] = 255  # a colour-coded mask
  Image.fromarray(red).convert("P").save(tmp_path / "mp.png")
  np.testing.assert_array_equal(read_mask(tmp_path / "mp.png"), (red[..., 0] > 0).astype(np.uint8))
  m = read_mask(tmp_path / "m.png")
  assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}


def test_bad_files_raise_naming_the_file(tmp_path):
  with pytest.raises(BadExampleError, match="missing.png"):
    read_image(tmp_path / "missing.png")
  (tmp_path / "junk.png").write_bytes(b"this is not an image at all" * 10)
  with pytest.raises(BadExampleError, match="junk.png"):
    read_image(tmp_path / "junk.png")
  (tmp_path / "empty.jpg").write_bytes(b"")
  with pytest.raises(BadExampleError, match="empty.jpg"):
    read_image(tmp_path / "empty.jpg")
  big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  for ext in ("png", "jpg"):
    Image.fromarray(big).save(tmp_path / f"full.{ext}")
    data = (tmp_path / f"full.{ext}").read_bytes()
    (tmp_path / f"trunc.{ext}").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadExampleError, match=f"trunc.{ext}"):
      read_image(tmp_path / f"trunc.{ext}")
  Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "small_mask.png")
  with pytest.raises(BadExampleError, match="small_mask.png"):
    read_mask(tmp_path / "small_mask.png", expected_hw=(H, W))
  assert issubclass(BadExampleError, ValueError)
