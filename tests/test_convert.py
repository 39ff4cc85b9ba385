"""PyTorch state dict <-> model conversion, file formats and the `mpc-jax convert` command."""

import math

import jax
import numpy as np
import pytest

from mpc_jax.checkpoint import load_model
from mpc_jax.convert import (
  cli_main,
  export_npz,
  from_torch_state_dict,
  load_state_dict_file,
  to_torch_state_dict,
)
from mpc_jax.models import count_params

from test_model import MICRO, ODD_HW, _forward
from test_parity import load_parity_fixture


def random_state_dict_from_tsv(path, seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  lines = path.read_text().splitlines()[1:]
  for line in lines:
    key, shape, dtype = line.split("\t")
    shape = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    if key.endswith("relative_position_index"):
      w = math.isqrt(shape[0])  # the index is [w*w, w*w]
      from mpc_jax.models.hrformer import relative_position_index

      sd[key] = relative_position_index(w)
    elif dtype == "int64":
      sd[key] = np.asarray(rng.integers(0, 1000), np.int64).reshape(shape)
    else:
      sd[key] = rng.standard_normal(shape).astype(np.float32)
  return sd, [line.split("\t")[0] for line in lines]


@pytest.mark.parity
def test_hrt_base_state_dict_converts_completely(fixtures_dir):
  sd, keys = random_state_dict_from_tsv(fixtures_dir / "hrt_base_mpc_state_dict.tsv")
  model = from_torch_state_dict(sd)  # None = HRT-base, catnet head
  assert count_params(model) == 45_035_227
  back = to_torch_state_dict(model)
  assert sorted(back) == sorted(keys)
  for key in keys:
    assert back[key].shape == sd[key].shape, key
    np.testing.assert_array_equal(back[key], sd[key], err_msg=key)


@pytest.mark.parity
def test_round_trip_is_bit_exact(fixtures_dir, tmp_path):
  _, meta, sd = load_parity_fixture(fixtures_dir)
  model = from_torch_state_dict(sd, meta["hrformer_config"])
  export_npz(model, tmp_path / "back.npz")
  back = load_state_dict_file(tmp_path / "back.npz")
  assert set(back) == set(sd)
  for key, value in sd.items():
    assert back[key].dtype == value.dtype, key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_missing_unexpected_and_misshaped_keys_are_listed():
  from mpc_jax.models import build_mpc

  sd = to_torch_state_dict(build_mpc(MICRO, seed=0))
  bad = dict(sd)
  del bad["encoder.conv1.weight"]
  del bad["decoder.classifier.11.bias"]
  bad["encoder.incre_modules.0.weight"] = np.zeros((3,), np.float32)
  bad["encoder.stage2.0.branches.0.0.norm1.weight"] = np.zeros((7,), np.float32)
  with pytest.raises(ValueError) as err:
    from_torch_state_dict(bad, MICRO)
  msg = str(err.value)
  for text in (
    "missing keys (2)",
    "encoder.conv1.weight",
    "decoder.classifier.11.bias",
    "unexpected keys (1)",
    "encoder.incre_modules.0.weight",
    "mis-shaped keys (1)",
    "encoder.stage2.0.branches.0.0.norm1.weight: got (7,)",
  ):
    assert text in msg
  with pytest.raises(ValueError, match="missing keys"):
    from_torch_state_dict(sd, MICRO, head="casiav2")


def test_backbone_only_and_dataparallel_prefixes():
  from mpc_jax.models import build_mpc

  sd = to_torch_state_dict(build_mpc(MICRO, seed=2))
  stage1 = {"module." + k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
  model = from_torch_state_dict(stage1, MICRO, head=None)
  back = to_torch_state_dict(model)
  for key, value in sd.items():
    if key.startswith("encoder."):
      np.testing.assert_array_equal(back[key], value)
  with pytest.raises(ValueError, match="decoder keys"):
    from_torch_state_dict(sd, MICRO, head=None)


@pytest.mark.slow
def test_file_formats_and_cli(tmp_path, capsys):
  from mpc_jax.models import build_mpc

  source = build_mpc(MICRO, seed=7)
  source.eval()
  sd = to_torch_state_dict(source)
  np.savez(tmp_path / "w.npz", **sd)
  from safetensors.numpy import save_file

  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
  paths = [tmp_path / "w.npz", tmp_path / "w.safetensors"]
  cfg_path = tmp_path / "cfg.json"
  import json

  cfg_path.write_text(json.dumps(MICRO))
  images = jax.random.uniform(jax.random.key(0), (1, *ODD_HW, 3))  # test_model's compiled size
  want = np.asarray(_forward(source, images)[1])
  for i, path in enumerate(paths):
    out = tmp_path / f"model{i}"
    assert cli_main([str(path), "--out", str(out), "--hrformer-config", str(cfg_path)]) == 0
    np.testing.assert_array_equal(np.asarray(_forward(load_model(out), images)[1]), want)
  assert cli_main([str(tmp_path / "absent.pth"), "--out", str(tmp_path / "x")]) == 1
  assert "not found" in capsys.readouterr().err
  assert (
    cli_main(
      [str(paths[0]), "--out", str(tmp_path / "y"), "--head", "casiav2", "--hrformer-config", str(cfg_path)]
    )
    == 1
  )
  assert "missing keys" in capsys.readouterr().err


def test_pth_checkpoint_converts(tmp_path):
  """A `.pth` file as the reference saves it (`{"state_dict": ...}` of torch tensors)."""
  torch = pytest.importorskip("torch")
  from mpc_jax.models import build_mpc

  source = build_mpc(MICRO, seed=3)
  source.eval()
  sd = to_torch_state_dict(source)
  torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, tmp_path / "w.pth")
  loaded = load_state_dict_file(tmp_path / "w.pth")
  assert set(loaded) == set(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)
