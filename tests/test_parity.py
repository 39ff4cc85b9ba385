"""Parity of the HRFormer/MPC forward with the PyTorch reference's outputs (`tests/fixtures/`)."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from mpc_jax.convert import from_torch_state_dict
from mpc_jax.models import count_params, output_size
from test_model import _forward, rel_err

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# Parity tolerance on `||out - ref|| / ||ref||`: float32 reaches 3.8e-7 to 1.3e-6 on the CPU.
PARITY_RTOL = 1e-5
# Per element, `max |out - ref| / max |ref|`: 4.5e-7 to 2.8e-6 is reached.
PARITY_ELEMENT_TOL = 2e-5


def load_parity_fixture(fixtures_dir, name="parity_tiny"):
  data = np.load(fixtures_dir / f"{name}.npz")
  meta = json.loads((fixtures_dir / f"{name}.json").read_text())
  sd = {k[len("state_dict/") :]: data[k] for k in data.files if k.startswith("state_dict/")}
  return data, meta, sd


def assert_matches_reference(got, ref, what):
  """`got` [B, H, W, C] equals the reference `ref` [B, H, W, C] in norm and element by element."""
  assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
  err = rel_err(got, ref)
  assert err < PARITY_RTOL, f"{what}: relative error {err:.2e}"
  worst = float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())
  assert worst < PARITY_ELEMENT_TOL, f"{what}: worst element error {worst:.2e} of max |ref|"


def check_parity(model, data, prefix=""):
  images = jnp.asarray(data[f"{prefix}input_nchw"].transpose(0, 2, 3, 1))
  feats, logits = _forward(model, images)
  for s in range(4):
    assert_matches_reference(feats[s], data[f"{prefix}scale{s}_nchw"].transpose(0, 2, 3, 1), f"scale {s}")
  assert_matches_reference(logits, data[f"{prefix}logits_nchw"].transpose(0, 2, 3, 1), "logits")


@pytest.mark.parity
def test_parity_with_reference_fixture(fixtures_dir):
  data, meta, sd = load_parity_fixture(fixtures_dir)
  model = from_torch_state_dict(sd, meta["hrformer_config"])
  assert count_params(model) == meta["params"]
  check_parity(model, data)


@pytest.mark.parity
@pytest.mark.parametrize("prefix, hw", [("", (150, 203)), ("small_", (45, 71))])
def test_parity_at_sizes_not_multiple_of_32(prefix, hw):
  """Reference values at 150x203 (scales 38x51, 19x26, 10x13, 5x7: windows padded, every fusion
  upsample at a non-integer ratio) and 45x71 (coarse scales smaller than a window)."""
  data, meta, sd = load_parity_fixture(FIXTURES, "parity_odd")
  assert data[f"{prefix}input_nchw"].shape[2:] == hw
  model = from_torch_state_dict(sd, meta["hrformer_config"])
  assert count_params(model) == meta["params"]
  for s in range(4):
    assert data[f"{prefix}scale{s}_nchw"].shape[2:] == output_size(*hw, s)
  check_parity(model, data, prefix)


def test_parity_check_catches_one_wrong_border_value():
  """The odd-size check is per value: one corner value off by 1e-4 of the largest escapes the
  norm (about 1e-6 of it) but not the element test; a one-pixel shift fails both."""
  data, _, _ = load_parity_fixture(FIXTURES, "parity_odd")
  ref = data["scale0_nchw"].transpose(0, 2, 3, 1).astype(np.float64)
  assert_matches_reference(ref.astype(np.float32), ref, "unchanged")
  bad = ref.copy()
  bad[0, -1, -1, 0] += 1e-4 * np.abs(ref).max()
  assert rel_err(bad, ref) < PARITY_RTOL
  with pytest.raises(AssertionError, match="worst element"):
    assert_matches_reference(bad, ref, "corner")
  with pytest.raises(AssertionError, match="relative error"):
    assert_matches_reference(np.roll(ref, 1, axis=2), ref, "shifted")
