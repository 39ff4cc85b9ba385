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
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(man)),
                                 file_format="array_record")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    src = source_from_spec("tfds:casia_v2:train")
    recs = {r["path"]: r for r in src}
    assert sorted(recs) == ["Au/Au_0.jpg", "Tp/Tp_0.jpg", "Tp/Tp_1.jpg"]
    assert recs["Tp/Tp_1.jpg"]["mask"].sum() == 6 * 24 and recs["Au/Au_0.jpg"]["mask"].sum() == 0
    # the stored image is the original JPEG, byte for byte
    from mpc_jax.data.io import read_image
    np.testing.assert_array_equal(recs["Tp/Tp_0.jpg"]["image"], read_image(man / "Tp" / "Tp_0.jpg"))
