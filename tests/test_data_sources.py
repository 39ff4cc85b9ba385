"""mpc_jax.data.sources: every spec form, bad-data policies, the repeat-weight mixture."""

import json

import numpy as np
import pytest
from PIL import Image

from mpc_jax.data.io import BadExampleError
from mpc_jax.data.sources import MixtureSource, PairSource, source_from_spec

H, W = 16, 20


def _write_pair(root, stem, *, tampered=True, mask_hw=(H, W), seed=0):
  rng = np.random.default_rng(seed)
  (root / "images").mkdir(parents=True, exist_ok=True)
  (root / "masks").mkdir(parents=True, exist_ok=True)
  Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
  m = np.zeros(mask_hw, np.uint8)
  if tampered:
    m[2:8, 3:9] = 255
  Image.fromarray(m).save(root / "masks" / f"{stem}.png")


def _check_record(rec, tampered=True):
  assert set(rec) >= {"image", "mask", "path"}
  assert rec["image"].shape == (H, W, 3) and rec["image"].dtype == np.uint8
  assert rec["mask"].shape == (H, W) and rec["mask"].dtype == np.uint8
  assert set(np.unique(rec["mask"])) <= {0, 1}
  assert (rec["mask"].sum() > 0) == tampered


def test_folder_pair_and_two_dir_spec(tmp_path):
  for i in range(3):
    _write_pair(tmp_path, f"im{i}", seed=i)
  # masks with a suffix are matched by stem
  (tmp_path / "masks" / "im2.png").rename(tmp_path / "masks" / "im2_gt.png")
  src = source_from_spec(str(tmp_path))
  assert len(src) == 3
  for i in range(3):
    _check_record(src[i])
  src2 = source_from_spec(f"{tmp_path / 'images'}:{tmp_path / 'masks'}")
  assert [r["path"] for r in src2] == [r["path"] for r in src]


def test_file_lists_txt_csv_npy_json(tmp_path):
  _write_pair(tmp_path, "a", seed=1)
  _write_pair(tmp_path, "b", tampered=False, seed=2)
  (tmp_path / "list.txt").write_text("images/a.png,masks/a.png\nimages/b.png,\n")
  (tmp_path / "list.csv").write_text("image,mask\nimages/a.png,masks/a.png\nimages/b.png,None\n")
  np.save(
    tmp_path / "list.npy",
    np.array(
      [[str(tmp_path / "images/a.png"), str(tmp_path / "masks/a.png")], [str(tmp_path / "images/b.png"), ""]]
    ),
  )
  (tmp_path / "list.json").write_text(
    json.dumps(
      [
        [str(tmp_path / "images/a.png"), str(tmp_path / "masks/a.png")],
        [str(tmp_path / "images/b.png"), "Negative"],
      ]
    )
  )
  for name in ("list.txt", "list.csv", "list.npy", "list.json"):
    src = source_from_spec(str(tmp_path / name))
    assert len(src) == 2, name
    _check_record(src[0], tampered=True)
    _check_record(src[1], tampered=False)  # authentic: zero mask


def test_synthetic_spec():
  src = source_from_spec("synthetic:4:3:32")
  assert len(src) == 4
  rec = src[1]
  assert rec["image"].shape == (32, 32, 3) and rec["mask"].shape == (32, 32)


def _broken_folder(root):
  """3 good pairs (one grayscale, one RGBA, one 16-bit) + every kind of broken example."""
  _write_pair(root, "good_rgb", seed=1)
  _write_pair(root, "good_gray", seed=2)
  Image.open(root / "images" / "good_gray.png").convert("L").save(root / "images" / "good_gray.png")
  _write_pair(root, "good_rgba", seed=3)
  Image.open(root / "images" / "good_rgba.png").convert("RGBA").save(root / "images" / "good_rgba.png")
  _write_pair(root, "good_16bit", seed=4)
  Image.fromarray((np.arange(H * W).reshape(H, W) * 200).astype(np.uint16)).save(
    root / "images" / "good_16bit.png"
  )
  _write_pair(root, "bad_size", mask_hw=(H + 1, W))
  _write_pair(root, "bad_corrupt")
  (root / "images" / "bad_corrupt.png").write_bytes(b"\x89PNG garbage" * 20)
  _write_pair(root, "bad_trunc")
  data = (root / "images" / "bad_trunc.png").read_bytes()
  (root / "images" / "bad_trunc.png").write_bytes(data[: len(data) // 2])
  _write_pair(root, "bad_nomask")
  (root / "masks" / "bad_nomask.png").unlink()
  _write_pair(root, "bad_noimage")
  (root / "images" / "bad_noimage.png").unlink()
  return 4


def test_bad_examples_skip_counts_and_logs(tmp_path, caplog):
  n_good = _broken_folder(tmp_path)
  with caplog.at_level("WARNING"):
    src = source_from_spec(str(tmp_path), on_bad_example="skip")
  assert len(src) == n_good
  assert src.num_bad == 5
  recs = [src[i] for i in range(len(src))]
  assert all(r is not None for r in recs)
  for r in recs:
    _check_record(r)
  skipped = " ".join(p for p, _ in src.bad_examples)
  for stem in ("bad_size", "bad_corrupt", "bad_trunc", "bad_nomask", "bad_noimage"):
    assert stem in skipped
    assert stem in caplog.text


def test_bad_examples_raise_names_the_file(tmp_path):
  _broken_folder(tmp_path)
  with pytest.raises(BadExampleError, match="bad_"):
    source_from_spec(str(tmp_path), on_bad_example="raise")
  for stem in ("bad_size", "bad_corrupt", "bad_trunc"):
    pairs = [(str(tmp_path / "images" / f"{stem}.png"), str(tmp_path / "masks" / f"{stem}.png"))]
    with pytest.raises(BadExampleError, match=stem):
      PairSource(pairs, on_bad_example="raise")
    # decode-time detection as well (no header validation)
    src = PairSource(pairs, on_bad_example="raise", check_files="none")
    with pytest.raises(BadExampleError, match=stem):
      src[0]
    src = PairSource(pairs, on_bad_example="skip", check_files="none")
    assert src[0] is None and src.num_bad == 1 and list(src) == []


def test_missing_mask_as_authentic(tmp_path):
  _write_pair(tmp_path, "a")
  _write_pair(tmp_path, "b")
  (tmp_path / "masks" / "b.png").unlink()
  src = source_from_spec(str(tmp_path), missing_mask="authentic")
  assert len(src) == 2 and src[1]["mask"].sum() == 0


def test_mixture_repeat_weights():
  a, b, c = list(range(10)), list(range(100, 105)), list(range(200, 220))
  mix = MixtureSource([a, b, c], [1, 4, 0.5], seed=0)
  assert mix.counts == [10, 20, 10] and len(mix) == 40
  items = [mix[i] for i in range(len(mix))]
  assert sorted(x for x in items if x < 100) == a
  assert sorted(x for x in items if 100 <= x < 200) == sorted(b * 4)
  third = [x for x in items if x >= 200]
  assert len(set(third)) == 10  # half of c, each once
  with pytest.raises(ValueError, match="weights"):
    MixtureSource([a], [-1])


def test_bad_policy_value():
  with pytest.raises(ValueError, match="on_bad_example"):
    source_from_spec("synthetic:2", on_bad_example="ignore")
