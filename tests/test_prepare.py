"""`mpc-jax prepare` -> ArrayRecord shards, and `arrayrecord:DIR` read back (decode, pipeline, training)."""

import json
import os
import pathlib
import subprocess
import sys

import cv2
import msgpack
import numpy as np
import pytest
from PIL import Image

from mpc_jax import prepare as prep
from mpc_jax.data import pipeline
from mpc_jax.data.arrayrecord import ArrayRecordSource
from mpc_jax.data.sources import PairSource, source_from_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOOD_FORGED = [
  "f_rgb.png",
  "f_jpeg.jpg",
  "f_gray.png",
  "f_rgba.png",
  "f_16bit.png",
  "f_tiff.tif",
  "f_01mask.png",
]
GOOD_AUTHENTIC = ["a0.jpg", "a1.png"]
BAD = {"b_truncated.png": "truncated PNG", "b_garbage.jpg": "truncated JPEG", "b_size.png": "differs"}


def _write_folder(d: pathlib.Path, seed=0):
  """A folder with images/ + masks/: forged in many encodings, authentic (no mask) and broken files."""
  rng = np.random.default_rng(seed)
  (d / "images").mkdir(parents=True)
  (d / "masks").mkdir()
  hw = (20, 24)

  def img(c=3):
    return rng.integers(0, 256, hw + ((c,) if c > 1 else ()), dtype=np.uint8)

  def mask(k):
    m = np.zeros(hw, np.uint8)
    m[2 : 8 + k, 3 : 10 + k] = 255
    return m

  Image.fromarray(img()).save(d / "images" / "f_rgb.png")
  Image.fromarray(img()).save(d / "images" / "f_jpeg.jpg", quality=90)
  Image.fromarray(img(1)).save(d / "images" / "f_gray.png")
  Image.fromarray(img(4), "RGBA").save(d / "images" / "f_rgba.png")
  cv2.imwrite(str(d / "images" / "f_16bit.png"), rng.integers(0, 65536, hw, dtype=np.uint16))
  Image.fromarray(img()).save(d / "images" / "f_tiff.tif")
  Image.fromarray(img()).save(d / "images" / "f_01mask.png")
  for k, name in enumerate(GOOD_FORGED):
    stem = os.path.splitext(name)[0]
    if name == "f_jpeg.jpg":
      Image.fromarray(mask(k)).save(d / "masks" / f"{stem}_gt.jpg", quality=95)  # lossy mask: binarised
    elif name == "f_01mask.png":
      Image.fromarray(mask(k) // 255).save(d / "masks" / f"{stem}.png")  # {0, 1}-coded
    else:
      Image.fromarray(mask(k)).save(d / "masks" / f"{stem}_mask.png")
  Image.fromarray(img()).save(d / "images" / "a0.jpg")
  Image.fromarray(img()).save(d / "images" / "a1.png")
  Image.fromarray(img()).save(d / "images" / "b_truncated.png")
  data = (d / "images" / "b_truncated.png").read_bytes()
  (d / "images" / "b_truncated.png").write_bytes(data[: len(data) // 2])
  Image.fromarray(mask(0)).save(d / "masks" / "b_truncated_gt.png")
  (d / "images" / "b_garbage.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
  Image.fromarray(img()).save(d / "images" / "b_size.png")
  Image.fromarray(np.zeros((9, 9), np.uint8)).save(d / "masks" / "b_size_gt.png")
  return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return _write_folder(tmp_path_factory.mktemp("forged") / "set")


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("packed") / "ar"
  man = prep.prepare([str(folder)], out, shard_size=3, workers=2, progress=False)
  return out, man


def _stored_records(out):
  """Every record of every shard, read with the array_record reader and msgpack only."""
  from array_record.python.array_record_module import ArrayRecordReader

  recs = []
  for f in sorted(os.listdir(out)):
    if f.endswith(".array_record"):
      r = ArrayRecordReader(str(out / f))
      recs += [msgpack.unpackb(b, raw=False) for b in r.read_all()]
      r.close()
  return recs


def test_records_hold_the_files_byte_for_byte(folder, packed):
  out, man = packed
  recs = _stored_records(out)
  names = sorted(os.path.basename(r["path"]) for r in recs)
  assert names == sorted(GOOD_FORGED + GOOD_AUTHENTIC)
  for r in recs:
    assert r["source"] == "set"
    assert r["image"] == (folder / r["path"]).read_bytes()  # path relative to the folder spec
    assert r["path"].startswith("images" + os.sep)
    name = os.path.basename(r["path"])
    assert (len(r["mask"]) == 0) == (name in GOOD_AUTHENTIC)
  # counts: expected from the file lists above, not from the packer
  assert man["records"] == 9 and man["forged"] == 7 and man["authentic"] == 2 and man["bad"] == 3
  [s] = man["sources"]
  assert s["images_without_mask"] == 2  # a0 and a1 (the garbage JPEG, also mask-less, was skipped as bad)
  assert len(s["bad_files"]) == 3
  for name, why in BAD.items():  # each broken file is named, with its reason
    assert any(name in b["path"] + b["reason"] and why in b["reason"] for b in s["bad_files"]), (
      name,
      s["bad_files"],
    )
  # sizes and checksums agree with the files on disk
  import hashlib

  lines = ""
  for sh in s["shards"]:
    data = (out / sh["file"]).read_bytes()
    assert len(data) == sh["bytes"] and hashlib.sha256(data).hexdigest() == sh["sha256"]
    lines += f"{sh['file']} {sh['sha256']}\n"
  assert man["checksum"] == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
  assert sum(sh["records"] for sh in s["shards"]) == 9 and len(s["shards"]) == 4  # 12 listed, 3 per shard
  assert json.loads((out / "manifest.json").read_text())["checksum"] == man["checksum"]
  assert prep.verify(out) == []


def test_records_decode_exactly_as_the_files(folder, packed):
  out, _ = packed
  src = source_from_spec(f"arrayrecord:{out}")
  files = PairSource([(str(folder / "images" / n), None) for n in GOOD_AUTHENTIC], check_files="none")
  assert len(src) == 9 and len(source_from_spec(f"arrayrecord:{out}:set")) == 9
  from mpc_jax.data.io import read_image, read_mask

  masks = {
    os.path.splitext(f)[0].replace("_gt", "").replace("_mask", ""): f for f in os.listdir(folder / "masks")
  }
  for rec in src:
    p = folder / rec["path"]
    np.testing.assert_array_equal(rec["image"], read_image(p))
    stem = p.stem
    if stem in masks:
      expect = read_mask(folder / "masks" / masks[stem])
      assert expect.sum() > 0
    else:
      expect = np.zeros(rec["image"].shape[:2], np.uint8)
    np.testing.assert_array_equal(rec["mask"], expect)
  # a {0,1}-coded mask survives (binarising at 127 would erase it); a lossy JPEG mask is binarised
  rec = next(r for r in src if r["path"].endswith("f_01mask.png"))
  assert rec["mask"].sum() == (8 + 6 - 2) * (10 + 6 - 3)
  assert files[0]["image"].shape == (20, 24, 3)


def test_resume_after_interruption_skips_done_shards(folder, tmp_path, monkeypatch, packed):
  calls = []
  real = prep.encode_record
  out = tmp_path / "ar"

  def flaky(*a, **k):
    calls.append(a[2])
    if (out / "set-00002-of-00004.array_record.tmp").exists():  # Ctrl-C while the third shard is written
      raise KeyboardInterrupt
    return real(*a, **k)

  monkeypatch.setattr(prep, "encode_record", flaky)
  with pytest.raises(KeyboardInterrupt):
    prep.prepare([str(folder)], out, shard_size=3, workers=1, progress=False)
  files = sorted(os.listdir(out))
  assert not (out / "manifest.json").exists()
  assert "set-00001-of-00004.array_record.done.json" in files
  assert "set-00002-of-00004.array_record.done.json" not in files
  assert "set-00002-of-00004.array_record.tmp" in files
  first = (out / "set-00000-of-00004.array_record").stat()
  with pytest.raises(FileNotFoundError, match="resume"):
    source_from_spec(f"arrayrecord:{out}")  # an unfinished folder is not readable yet
  calls.clear()
  monkeypatch.setattr(prep, "encode_record", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
  man = prep.prepare([str(folder)], out, shard_size=3, workers=1, progress=False)
  assert (out / "set-00000-of-00004.array_record").stat().st_mtime_ns == first.st_mtime_ns  # not rewritten
  done_first = sum(
    json.loads((out / f"set-0000{k}-of-00004.array_record.done.json").read_text())["records"]
    for k in range(2)
  )
  assert len(calls) == 9 - done_first and done_first >= 3
  assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
  # the resumed folder equals an uninterrupted run (workers=2 there), shard for shard
  assert man["checksum"] == packed[1]["checksum"] and man["records"] == 9 and man["bad"] == 3


def test_other_inputs_need_overwrite(folder, tmp_path):
  out = tmp_path / "ar"
  prep.prepare([str(folder)], out, shard_size=3, workers=1, progress=False)
  with pytest.raises(ValueError, match="other inputs"):
    prep.prepare([str(folder)], out, shard_size=5, workers=1, progress=False)
  man = prep.prepare([str(folder)], out, shard_size=5, workers=1, progress=False, overwrite=True)
  assert man["num_shards"] == 3 and sorted(f for f in os.listdir(out) if f.endswith(".array_record")) == [
    f"set-0000{k}-of-00003.array_record" for k in range(3)
  ]
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "x.txt").write_text("keep me")
  with pytest.raises(ValueError, match="not empty"):
    prep.prepare([str(folder)], tmp_path / "other", workers=1, progress=False)


def test_missing_mask_bad_and_named_sources_and_synthetic(folder, tmp_path):
  from mpc_jax.data.synthetic import SyntheticSource

  man = prep.prepare(
    [f"forg={folder}", "syn=synthetic:4:3:32"], tmp_path / "ar", workers=1, progress=False, missing_mask="bad"
  )
  forg, syn = man["sources"]
  assert (forg["name"], forg["records"], syn["name"], syn["records"]) == ("forg", 7, "syn", 4)
  assert forg["bad"] == 3 + 2  # + the two authentic images, now "no mask"
  both = source_from_spec(f"arrayrecord:{tmp_path / 'ar'}")
  assert len(both) == 11
  only = source_from_spec(f"arrayrecord:{tmp_path / 'ar'}:syn")
  ref = SyntheticSource(4, 3, (32, 32))
  for i in range(4):  # decoded sources are stored as lossless PNG
    np.testing.assert_array_equal(only[i]["image"], ref[i]["image"])
    np.testing.assert_array_equal(only[i]["mask"], ref[i]["mask"])
  with pytest.raises(ValueError, match="no source 'nope'"):
    source_from_spec(f"arrayrecord:{tmp_path / 'ar'}:nope")


def test_pipeline_sharding_resume_and_mixture_from_shards(packed):
  out, _ = packed
  cfg = pipeline.default_data_config()
  cfg.input_size, cfg.augment, cfg.read_threads, cfg.read_prefetch = 32, True, 1, 4
  cfg.sources = [{"spec": f"arrayrecord:{out}:set", "weight": 2.0}]

  def batches(pi, pc, b, n, state=None):
    it = pipeline.make_train_iterator(
      cfg, seed=5, process_index=pi, process_count=pc, batch_size_per_process=b
    )
    if state is not None:
      it.set_state(state)
    return it, [next(it) for _ in range(n)]

  _, one = batches(0, 1, 4, 4)
  two = [batches(p, 2, 2, 4)[1] for p in range(2)]
  for k in range(4):  # two processes assemble the global batches of one process (mixture x2 = 18 / epoch)
    np.testing.assert_array_equal(np.concatenate([two[0][k]["image"], two[1][k]["image"]]), one[k]["image"])
    np.testing.assert_array_equal(np.concatenate([two[0][k]["mask"], two[1][k]["mask"]]), one[k]["mask"])
  it, _ = batches(0, 1, 4, 2)
  state = it.get_state()
  _, rest = batches(0, 1, 4, 2, state)
  for a, b in zip(rest, one[2:]):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_grain_worker_process_reads_the_shards(packed):
  """The source pickles into a grain worker process (shards reopened there): same batches as in-process."""
  out, _ = packed
  cfg = pipeline.default_data_config()
  cfg.input_size, cfg.augment, cfg.read_threads = 32, True, 1
  cfg.sources = [f"arrayrecord:{out}"]
  ref = pipeline.make_train_iterator(cfg, seed=1, process_index=0, process_count=1, batch_size_per_process=2)
  expected = [next(ref) for _ in range(3)]
  cfg.num_workers = 1
  it = pipeline.make_train_iterator(cfg, seed=1, process_index=0, process_count=1, batch_size_per_process=2)
  for e in expected:
    np.testing.assert_array_equal(next(it)["image"], e["image"])


def test_cli_exit_codes_and_verify(folder, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))

  def run(*args):
    return subprocess.run(
      [sys.executable, "-m", "mpc_jax.main", "prepare", *args],
      capture_output=True,
      text=True,
      env=env,
      timeout=120,
    )

  r = run("--help")
  assert r.returncode == 0 and "arrayrecord" in r.stdout
  r = run("--version")
  assert r.returncode == 0 and r.stdout.startswith("mpc-jax ")
  r = run("--out", str(tmp_path / "x"))
  assert r.returncode == 2 and "SPEC" in r.stderr
  r = run(str(tmp_path / "missing_folder"), "--out", str(tmp_path / "x"))
  assert r.returncode == 1 and "missing_folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
  out = tmp_path / "ar"
  r = run(str(folder), "--out", str(out), "--workers", "1", "--shard-size", "4")
  assert r.returncode == 0, r.stderr
  assert "3 bad file(s) skipped" in r.stdout and "b_garbage.jpg" in r.stdout and "b_size" in r.stdout
  assert "records/s" in r.stderr and "ETA" in r.stderr
  assert run("--verify", str(out)).returncode == 0
  shard = out / "set-00001-of-00003.array_record"
  data = bytearray(shard.read_bytes())
  data[100] ^= 0xFF
  shard.write_bytes(bytes(data))
  r = run("--verify", str(out))
  assert r.returncode == 1 and "set-00001-of-00003" in r.stderr


@pytest.mark.slow
def test_tiny_training_run_reads_arrayrecord_shards(tmp_path):
  """A few training steps (of the tests' small model) with `arrayrecord:` shards as the only source."""
  sys.path.insert(0, str(ROOT / "tests"))
  from small_model import build_small_model
  from train_testlib import tiny_config

  from mpc_jax import train
  from mpc_jax.data.synthetic import write_dataset

  write_dataset(str(tmp_path / "syn"), 24, seed=0, size=(32, 32))
  prep.prepare([str(tmp_path / "syn")], tmp_path / "ar", shard_size=10, workers=1, progress=False)
  config = tiny_config(stages=("stage2",))
  config.data.sources = [{"spec": f"arrayrecord:{tmp_path / 'ar'}", "weight": 1.0}]
  config.data.val_sources = ()
  config.stage2.num_steps = 2
  config.stage2.checkpoint_every = 2
  config.export_models = False
  result = train.train_and_evaluate(config, str(tmp_path / "work"), build_model=build_small_model)
  assert "preempted" not in result
  assert (tmp_path / "work" / "stage2" / "checkpoints" / "2").is_dir()  # 2 steps ran and were saved
  saved = json.loads((tmp_path / "work" / "config.json").read_text())
  assert saved["data"]["sources"][0]["spec"].startswith("arrayrecord:")


def test_pack_a_public_layout_relative_paths_and_names(tmp_path):
  from fake_releases import make

  expected = make("nist16", tmp_path / "NC2016_Test0613")  # masks black = manipulated, listed in a CSV
  man = prep.prepare(
    [f"layout:nist16:{tmp_path / 'NC2016_Test0613'}"], tmp_path / "ar", workers=1, progress=False
  )
  assert man["sources"][0]["name"] == "NC2016_Test0613" and man["records"] == len(expected) == 2
  src = ArrayRecordSource(tmp_path / "ar")
  for i in range(len(src)):
    raw, rec = src.raw(i), src[i]
    assert raw["image_bytes"] == (tmp_path / "NC2016_Test0613" / raw["path"]).read_bytes()
    np.testing.assert_array_equal(rec["mask"], expected[raw["path"]])
  assert prep.source_name("tfds:casia_v2:train")[0] == "tfds_casia_v2_train"
  assert prep.source_name("X=/data/set")[0] == "X" and prep.source_name("/data/CASIAv2/")[0] == "CASIAv2"


def test_a_folder_without_masks_is_packed_as_authentic(tmp_path):
  (tmp_path / "au").mkdir()
  rng = np.random.default_rng(3)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "au" / f"a{i}.jpg")
  (tmp_path / "au" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
  man = prep.prepare([str(tmp_path / "au")], tmp_path / "ar", workers=1, progress=False)
  assert (man["records"], man["authentic"], man["forged"], man["bad"]) == (3, 3, 0, 1)
  recs = _stored_records(tmp_path / "ar")
  assert sorted(r["path"] for r in recs) == ["a0.jpg", "a1.jpg", "a2.jpg"] and all(
    r["mask"] == b"" for r in recs
  )
  with pytest.raises(
    FileNotFoundError, match="images/"
  ):  # without --missing-mask authentic it stays an error
    prep.prepare([str(tmp_path / "au")], tmp_path / "ar2", workers=1, progress=False, missing_mask="bad")


@pytest.mark.slow
def test_train_cli_takes_arrayrecord_sources_on_the_command_line(tmp_path):
  """`--config.data.sources='("arrayrecord:DIR",)'` is a valid override (a tuple field); a missing folder is
  then reported by name, in one line."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "mpc_jax.main",
      "train",
      "--config",
      str(ROOT / "configs" / "demo.py"),
      "--workdir",
      str(tmp_path / "w"),
      f"--config.data.sources=('arrayrecord:{tmp_path}/nowhere',)",
      "--config.stages=('stage2',)",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert r.returncode == 1, r.stderr[-2000:]
  assert "arrayrecord folder not found" in r.stderr and "nowhere" in r.stderr
  assert "not supported for overriding" not in r.stderr
