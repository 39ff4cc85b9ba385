"""TFDS builders in data/ (manual dir) + the `tfds:NAME:split` source, built without TensorFlow."""

import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for `data.*`


def test_casia_v2_builder_and_tfds_source(tmp_path, monkeypatch):
  import data.casia_v2  # noqa: F401 - registers 'casia_v2'
  from mpc_jax.data.sources import source_from_spec

  man = tmp_path / "manual"
  for d in ("Tp", "Au", "Groundtruth"):
    (man / d).mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(man / "Tp" / f"Tp_{i}.jpg")
    m = np.zeros((20, 24), np.uint8)
    m[: 5 + i] = 255
    Image.fromarray(m).save(man / "Groundtruth" / f"Tp_{i}_gt.png")
  Image.fromarray(np.zeros((9, 9), np.uint8)).save(man / "Groundtruth" / "Tp_2_gt.png")  # wrong size: skipped
  Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(man / "Au" / "Au_0.jpg")
  builder = tfds.builder("casia_v2", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(man)), file_format="array_record"
  )
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  src = source_from_spec("tfds:casia_v2:train")
  recs = {r["path"]: r for r in src}
  assert sorted(recs) == ["Au/Au_0.jpg", "Tp/Tp_0.jpg", "Tp/Tp_1.jpg"]
  assert recs["Tp/Tp_1.jpg"]["mask"].sum() == 6 * 24 and recs["Au/Au_0.jpg"]["mask"].sum() == 0
  # the stored image is the original JPEG, byte for byte
  from mpc_jax.data.io import read_image

  np.testing.assert_array_equal(recs["Tp/Tp_0.jpg"]["image"], read_image(man / "Tp" / "Tp_0.jpg"))


# ----------------------------------------------------------------- every builder on a fake public layout
from fake_releases import LAYOUT_OF_BUILDER, make  # noqa: E402 (tests/ is on sys.path under pytest)


def _build(name, manual, data_dir):
  import data.tfds.all  # noqa: F401 - registers every builder

  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual)), file_format="array_record"
  )
  return builder


@pytest.mark.parametrize("name", sorted(LAYOUT_OF_BUILDER))
def test_builder_reads_the_public_layout(name, tmp_path, monkeypatch):
  """Each builder on a tiny fake copy of its release: the forged images, their original bytes, their masks
  decoded with the release's coding (white / black / 3-level / Columbia edge-masks)."""
  from mpc_jax.data.sources import source_from_spec

  man = tmp_path / "manual"
  expected = make(LAYOUT_OF_BUILDER[name], man)
  builder = _build(name, man, tmp_path / "tfds")
  split = "train" if name in ("tamp_coco", "imd2020") else "test"
  assert list(builder.info.splits) == [split]
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  recs = {r["path"]: r for r in source_from_spec(f"tfds:{name}:{split}")}
  assert sorted(recs) == sorted(expected)  # authentic / original / extra-mask files are left out
  for rel, m in expected.items():
    np.testing.assert_array_equal(recs[rel]["mask"], m, err_msg=rel)
    assert recs[rel]["mask"].sum() > 0
  raw = builder.as_data_source(split=split)
  for ex in raw:
    rel = ex["path"].decode() if isinstance(ex["path"], bytes) else ex["path"]
    assert bytes(ex["image_bytes"]) == (man / rel).read_bytes()
  # the same folder read directly, without building: `layout:NAME:ROOT`
  direct = source_from_spec(f"layout:{LAYOUT_OF_BUILDER[name]}:{man}")
  assert len(direct) == len(expected)
  for rec in direct:
    np.testing.assert_array_equal(rec["mask"], expected[str(pathlib.Path(rec["path"]).relative_to(man))])


def test_builders_accept_images_and_masks_and_name_a_wrong_folder(tmp_path, monkeypatch):
  from mpc_jax.data.layouts import layout_pairs

  expected = make("images_masks", tmp_path / "m")
  _build("nist16", tmp_path / "m", tmp_path / "tfds")  # images/ + masks/ (white = tampered) instead of probe/
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  from mpc_jax.data.sources import source_from_spec

  recs = {r["path"]: r for r in source_from_spec("tfds:nist16:test")}
  assert sorted(recs) == sorted(expected)
  for rel, m in expected.items():
    np.testing.assert_array_equal(recs[rel]["mask"], m)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="DSO-1"):
    layout_pairs("dso1", tmp_path / "empty")
  with pytest.raises(ValueError, match="unknown layout"):
    layout_pairs("ffpp", tmp_path / "empty")
