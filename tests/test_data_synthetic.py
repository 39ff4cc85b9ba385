"""mpc_jax.data.synthetic: kinds, determinism, the folder writer + CLI, and a hardness check."""

import numpy as np
import pytest

from mpc_jax.data import synthetic
from mpc_jax.data.sources import source_from_spec


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_generate_each_kind(kind):
  ex = synthetic.generate_example(np.random.default_rng(0), size=(48, 64), kind=kind)
  assert ex["image"].shape == (48, 64, 3) and ex["image"].dtype == np.uint8
  assert ex["mask"].shape == (48, 64) and ex["mask"].dtype == np.uint8
  assert set(np.unique(ex["mask"])) <= {0, 1}
  assert ex["kind"] == kind
  assert (ex["mask"].sum() > 0) == (kind != "authentic")


def test_deterministic_and_order_independent():
  a = synthetic.SyntheticSource(6, seed=3, size=40)
  b = synthetic.SyntheticSource(6, seed=3, size=40, cache=False)
  for i in (5, 0, 3):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    np.testing.assert_array_equal(a[i]["mask"], b[i]["mask"])
  c = synthetic.SyntheticSource(6, seed=4, size=40)
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  with pytest.raises(ValueError, match="difficulty"):
    synthetic.SyntheticSource(2, difficulty=2)


def test_spec_string_and_config_share_the_defaults():
  d = synthetic.SyntheticConfig()
  assert synthetic.SyntheticConfig.from_spec("synthetic:7") == synthetic.SyntheticConfig(num=7)
  assert synthetic.SyntheticConfig.from_spec("synthetic:7::40:0.25") == synthetic.SyntheticConfig(
    num=7, size=40, difficulty=0.25
  )
  src = source_from_spec("synthetic:7:3")
  assert (src.num, src.seed, src.size, src.difficulty, src.authentic_prob, src.cache) == (
    7,
    3,
    (d.size, d.size),
    d.difficulty,
    d.authentic_prob,
    d.cache,
  )
  plain = synthetic.SyntheticSource(7)
  assert (plain.seed, plain.size, plain.difficulty) == (d.seed, (d.size, d.size), d.difficulty)
  for bad in ("synthetic:", "synthetic:seven", "synthetic:7:1.5"):
    with pytest.raises(ValueError, match=r"synthetic:NUM\[:SEED"):
      source_from_spec(bad)


def test_write_dataset_and_cli_read_back(tmp_path, capsys):
  counts = synthetic.write_dataset(tmp_path / "w", 5, seed=1, size=(32, 32))
  assert sum(counts.values()) == 5
  src = source_from_spec(str(tmp_path / "w"))
  mem = synthetic.SyntheticSource(5, seed=1, size=32)
  assert len(src) == 5
  for i in range(5):
    np.testing.assert_array_equal(src[i]["image"], mem[i]["image"])  # PNG: pixel exact
    np.testing.assert_array_equal(src[i]["mask"], mem[i]["mask"])
  assert (
    synthetic.cli_main(["--out", str(tmp_path / "cli"), "--num", "3", "--seed", "2", "--size", "32"]) == 0
  )
  out = capsys.readouterr()
  assert "3/3" in out.err and len(source_from_spec(str(tmp_path / "cli"))) == 3


def test_forgeries_are_not_a_coloured_region():
  """A colour-outlier detector must stay close to the all-ones floor at every difficulty."""
  for d in (0.0, 1.0):
    exs = [
      synthetic.generate_example(np.random.default_rng([9, i]), (64, 64), difficulty=d, authentic_prob=0)
      for i in range(40)
    ]
    f1 = synthetic.trivial_detector_f1(exs)
    assert f1["colour"] < f1["all_ones"] + 0.1, (d, f1)
    if d == 0.0:
      assert f1["noise"] > f1["all_ones"] + 0.05, f1  # easy: a real trace is there to learn
