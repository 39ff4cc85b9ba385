"""mpc_jax.data.pipeline / transforms: batches, views, determinism, sharding, resume, mixture, eval."""

import numpy as np
import pytest

from mpc_jax.data import pipeline
from mpc_jax.data.sources import PairSource
from mpc_jax.data.transforms import TrainTransform

S = 64


class IdSource:
  """Image i is the constant value `offset + i` (so batches say which examples they hold)."""

  def __init__(self, n, offset=0, hw=(40, 48)):
    self.n, self.offset, self.hw = n, offset, hw

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    img = np.full(self.hw + (3,), self.offset + int(i), np.uint8)
    mask = np.zeros(self.hw, np.uint8)
    mask[: self.hw[0] // 2] = 1
    return {"image": img, "mask": mask, "path": f"id{self.offset + int(i)}"}


def _cfg(**kw):
  c = pipeline.default_data_config()
  c.input_size, c.augment, c.read_threads, c.read_prefetch = S, False, 1, 4
  c.synthetic.num, c.synthetic.size = 8, 48
  c.update(kw)
  return c


def _ids(batch):
  return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()


def _train_ds(cfg, sources, seed=0, pi=0, pc=1, b=2):
  built = [(f"s{k}", w, s) for k, (w, s) in enumerate(sources)]
  return pipeline.make_train_dataset(
    cfg, seed=seed, process_index=pi, process_count=pc, batch_size_per_process=b, sources=built
  )


def test_train_batch_shapes_full_augmentation_and_second_view():
  cfg = _cfg(augment=True, second_view=True)
  it = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1, batch_size_per_process=3)
  for _ in range(2):
    b = next(it)
    assert b["image"].shape == (3, S, S, 3) and b["image"].dtype == np.float32
    assert 0 <= b["image"].min() and b["image"].max() <= 1
    assert b["mask"].shape == (3, S // 4, S // 4) and set(np.unique(b["mask"])) <= {0.0, 1.0}
    assert b["image_view2"].shape == b["image"].shape
    assert set(b) == {"image", "mask", "image_view2"}  # nothing else crosses to the devices


def test_train_batches_carry_only_what_the_step_reads():
  it = pipeline.make_train_iterator(
    _cfg(), seed=0, process_index=0, process_count=1, batch_size_per_process=2
  )
  b = next(it)
  assert set(b) == {"image", "mask"}
  assert all(isinstance(v, np.ndarray) for v in b.values())


def test_transform_is_deterministic_and_views_share_geometry():
  rec = {
    "image": np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8),
    "mask": np.zeros((50, 70), np.uint8),
  }
  rec["mask"][10:30, 5:40] = 1
  t = TrainTransform(S, 4, augment=True, augment_prob=1.0, second_view=True)
  for seed in range(8):
    a = t.random_map(dict(rec), np.random.default_rng(seed))
    b = t.random_map(dict(rec), np.random.default_rng(seed))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    # the views differ only photometrically: close on average, same layout
    assert np.abs(a["image"] - a["image_view2"]).mean() < 0.15
  none = TrainTransform(S, 4, augment=False).random_map(dict(rec), np.random.default_rng(0))
  assert none["mask"].shape == (S // 4, S // 4) and none["mask"].sum() > 0


def test_mask_follows_the_image_through_augmentation():
  # the forged region is drawn white on black, so after every geometric transform (scale, pad,
  # flips, rotations, distortions) the bright pixels must still be where the mask says
  import cv2

  mask = np.zeros((60, 90), np.uint8)
  mask[8:30, 20:80] = 1  # off-centre and not square: flips, rotations and transposes all move it
  image = np.repeat(mask[..., None] * 255, 3, axis=-1).astype(np.uint8)
  t = TrainTransform(S, 4, augment=True, augment_prob=1.0)
  agreements = []
  for seed in range(16):
    out = t.random_map({"image": image, "mask": mask}, np.random.default_rng(seed))
    bright = cv2.resize(out["image"].mean(-1), (S // 4, S // 4), interpolation=cv2.INTER_AREA) > 0.5
    agreements.append(float(np.mean(bright == (out["mask"] > 0.5))))
  assert min(agreements) > 0.85, agreements


def test_determinism_from_seed():
  cfg = _cfg(augment=True)
  batches = []
  for _ in range(2):
    it = iter(_train_ds(cfg, [(1, IdSource(10))], seed=5))
    batches.append([next(it) for _ in range(4)])
  for x, y in zip(*batches):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["mask"], y["mask"])
  it = iter(_train_ds(cfg, [(1, IdSource(10))], seed=6))
  other = [next(it) for _ in range(4)]
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(batches[0], other))


def test_sharding_two_processes_disjoint_and_covering():
  cfg = _cfg(num_epochs=1, drop_remainder=False)
  seen = []
  for pi in range(2):
    ids = [i for b in _train_ds(cfg, [(1, IdSource(11))], seed=3, pi=pi, pc=2) for i in _ids(b)]
    seen.append(ids)
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(11))
  assert abs(len(seen[0]) - len(seen[1])) <= 1


def test_epochs_reshuffle_and_cover():
  cfg = _cfg(num_epochs=2, drop_remainder=False)
  ids = [i for b in _train_ds(cfg, [(1, IdSource(8))], seed=0, b=4) for i in _ids(b)]
  assert sorted(ids[:8]) == list(range(8)) and sorted(ids[8:]) == list(range(8))
  assert ids[:8] != ids[8:]


def test_resume_from_state_continues_the_same_order():
  cfg = _cfg(augment=True)
  ds = _train_ds(cfg, [(1, IdSource(9))], seed=1)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]  # crosses an epoch boundary (9 examples, batch 2)
  it2 = iter(_train_ds(cfg, [(1, IdSource(9))], seed=1))
  it2.set_state(state)
  for e in expected:
    got = next(it2)
    np.testing.assert_array_equal(got["image"], e["image"])
    np.testing.assert_array_equal(got["mask"], e["mask"])


def test_mixture_weights_counted_over_many_draws():
  cfg = _cfg()
  ds = _train_ds(
    cfg, [(1, IdSource(10, offset=0)), (4, IdSource(5, offset=100)), (0.5, IdSource(20, offset=200))], b=8
  )
  it = iter(ds)
  ids = [i for _ in range(50) for i in _ids(next(it))]  # 400 draws = 10 epochs of 40
  counts = np.array([sum(i < 100 for i in ids), sum(100 <= i < 200 for i in ids), sum(i >= 200 for i in ids)])
  np.testing.assert_array_equal(counts, [100, 200, 100])
  # 'sample' mixture: probabilities proportional to weights
  cfg = _cfg(mixture="sample")
  it = iter(_train_ds(cfg, [(1, IdSource(10, offset=0)), (3, IdSource(5, offset=100))], b=8))
  ids = [i for _ in range(50) for i in _ids(next(it))]
  frac = np.mean([i >= 100 for i in ids])
  assert abs(frac - 0.75) < 0.06


def test_bad_examples_are_dropped_from_training(tmp_path):
  from PIL import Image

  pairs = []
  for i in range(5):
    p = tmp_path / f"{i}.png"
    Image.fromarray(np.full((20, 20, 3), i, np.uint8)).save(p)
    pairs.append((str(p), None))
  (tmp_path / "2.png").write_bytes(b"broken")
  src = PairSource(pairs, on_bad_example="skip", check_files="none")
  cfg = _cfg(num_epochs=1, drop_remainder=False)
  ids = [i for b in _train_ds(cfg, [(1, src)], b=2) for i in _ids(b)]
  assert sorted(ids) == [0, 1, 3, 4]


def test_eval_iterator_keeps_original_masks(tmp_path):
  cfg = _cfg()
  src = IdSource(5, hw=(30, 44))
  batches = list(pipeline.make_eval_iterator(cfg, src, batch_size=2))
  assert len(batches) == 3
  b = batches[0]
  assert b["image"].shape == (2, S, S, 3) and b["mask_small"].shape == (2, S // 4, S // 4)
  assert b["mask"][0].shape == (30, 44) and b["orig_hw"].tolist() == [[30, 44], [30, 44]]
  last = batches[-1]
  assert last["valid"].tolist() == [True, False] and last["image"].shape[0] == 2 and len(last["mask"]) == 1
  assert [p for bb in batches for p in bb["path"]] == [f"id{i}" for i in range(5)]  # fixed order
  # spec strings work too
  syn = list(pipeline.make_eval_iterator(cfg, "synthetic:3:1:48", batch_size=4))
  assert syn[0]["mask"][0].shape == (48, 48)


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("input_size", 100, "input_size"),
    ("gt_ratio", 0, "gt_ratio"),
    ("sources", [], "sources"),
    ("on_bad_example", "ignore", "on_bad_example"),
    ("mixture", "zip", "mixture"),
    ("augment_prob", 2.0, "augment_prob"),
    ("num_workers", -1, "num_workers"),
    ("check_files", "quick", "check_files"),
  ],
)
def test_config_validation_names_the_field(field, value, match):
  cfg = _cfg()
  cfg[field] = value
  with pytest.raises(ValueError, match=f"config.data.{match}"):
    pipeline.check_data_config(cfg)


def test_old_validate_field_says_to_use_check_files():
  cfg = _cfg()
  cfg.validate = "full"
  with pytest.raises(ValueError, match="config.data.validate is now config.data.check_files"):
    pipeline.check_data_config(cfg)
  with pytest.raises(ValueError, match="config.data.validate is now config.data.check_files"):
    pipeline.build_sources({"validate": "none"})


def test_check_files_reaches_the_file_sources(tmp_path):
  from PIL import Image

  for d in ("images", "masks"):
    (tmp_path / d).mkdir()
  for i in range(3):
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / f"{i}.png")
  data = (tmp_path / "images" / "1.png").read_bytes()
  (tmp_path / "images" / "1.png").write_bytes(data[:-12])  # no PNG ending: fails the header check
  lengths = {}
  for mode in ("header", "none"):
    [(_, _, src)] = pipeline.build_sources(_cfg(sources=[str(tmp_path)], check_files=mode))
    lengths[mode] = len(src)
  assert lengths == {"header": 2, "none": 3}


@pytest.mark.parametrize("form", ["configdict", "dict"])
def test_unknown_data_config_field_is_named(form):
  for bad, name in (
    ({"input_sise": 64}, "config.data.input_sise"),
    ({"synthetic": {"nmu": 8}}, "config.data.synthetic.nmu"),
  ):
    cfg = _cfg() if form == "configdict" else {}
    for k, v in bad.items():
      if form == "configdict" and k == "synthetic":
        cfg.synthetic.update(v)  # ConfigDict.update adds the unknown field
      else:
        cfg[k] = v
    with pytest.raises(ValueError, match=f"{name} is not a field"):
      pipeline.check_data_config(cfg)
    with pytest.raises(ValueError, match=f"{name} is not a field"):
      list(pipeline.make_eval_iterator(cfg, IdSource(2), batch_size=2))


def test_data_config_forms_merge_over_the_one_set_of_defaults():
  defaults = pipeline.DataConfig()
  assert pipeline.data_config(None) == defaults
  assert pipeline.data_config({}) == defaults
  assert pipeline.data_config(pipeline.default_data_config()) == defaults
  assert pipeline.data_config(pipeline.default_data_config().to_dict()) == defaults
  c = pipeline.data_config(
    {"input_size": 64, "sources": ["a", {"spec": "b", "weight": 2}], "synthetic": {"size": 32}}
  )
  assert c.input_size == 64 and c.gt_ratio == defaults.gt_ratio
  assert c.sources == (("a", 1.0), ("b", 2.0))
  assert c.synthetic.size == 32 and c.synthetic.num == defaults.synthetic.num
  assert pipeline.data_config(c) is c
  # the ConfigDict form can be overridden on the command line: typed placeholders, tuples of sources
  d = pipeline.default_data_config()
  d.num_epochs, d.sources = 3, ["x"]
  assert d.num_epochs == 3 and d.sources == ("x",)


@pytest.mark.slow
def test_worker_processes_and_checkpoint_roundtrip(tmp_path):
  """The one test that spawns a grain worker process: same batches as in-process, resumable state."""
  cfg = _cfg(num_workers=1, augment=True)
  cfg_ref = _cfg(num_workers=0, augment=True)
  ref_it = pipeline.make_train_iterator(
    cfg_ref, seed=2, process_index=0, process_count=1, batch_size_per_process=2
  )
  ref = [next(ref_it) for _ in range(4)]
  it = pipeline.make_train_iterator(cfg, seed=2, process_index=0, process_count=1, batch_size_per_process=2)
  first = next(it)
  np.testing.assert_array_equal(first["image"], ref[0]["image"])
  next(it)
  state = it.get_state()
  it2 = pipeline.make_train_iterator(cfg, seed=2, process_index=0, process_count=1, batch_size_per_process=2)
  it2.set_state(state)
  for e in ref[2:]:
    np.testing.assert_array_equal(next(it2)["image"], e["image"])


def test_mask_resize_is_bilinear_then_above_127():
  from mpc_jax.data.transforms import resize_mask_like_reference

  # halving a 4x4 mask averages each 2x2 block (half-pixel bilinear): 1 of 4 forged -> 64 (authentic),
  # 2 of 4 -> 128 and 3 of 4 -> 191 (forged), 0 of 4 -> 0
  m = np.zeros((4, 4), np.uint8)
  m[0, 0] = 1  # top-left block: 1 of 4
  m[0, 2:] = 1  # top-right block: 2 of 4
  m[2, 0:2] = 1  # bottom-left block: 3 of 4
  m[3, 0] = 1
  out = resize_mask_like_reference(m * 255, 2)
  np.testing.assert_array_equal(out, [[0, 1], [1, 0]])
  assert out.dtype == np.float32
