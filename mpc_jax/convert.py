"""Official PyTorch MPC weights <-> our model, and the `mpc-jax convert` command.

The reference's state dict (`encoder.*` = HRFormer, `decoder.*` = localization head) maps onto our
parameter paths mechanically: our modules carry the reference's attribute names and `nn.Sequential`
indices, `backbone`/`head` stand for `encoder`/`decoder`, and only the leaf names and layouts
differ (conv `OIHW` <-> `HWIO`, linear `[out, in]` <-> `[in, out]`, BN `weight`/`running_*` <->
`scale`/`mean`/`var`). `relative_position_index` buffers are checked against the ones we compute.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import re
import sys

import jax
import numpy as np
from flax import nnx

from mpc_jax.models import build_mpc
from mpc_jax.models.hrformer import relative_position_index

_TOP = {"backbone": "encoder", "head": "decoder"}
_LEAF = {
  "kernel": "weight",
  "scale": "weight",
  "bias": "bias",
  "mean": "running_mean",
  "var": "running_var",
  "num_batches_tracked": "num_batches_tracked",
  "relative_position_bias_table": "relative_position_bias_table",
}


def _flat_state(model):
  """`{torch_key: (path, variable)}` for every stored array of `model` (RNG state excluded)."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    if "rngs" in path or path[-1] not in _LEAF:
      continue
    key = ".".join([_TOP.get(str(path[0]), str(path[0]))] + [str(p) for p in path[1:-1]] + [_LEAF[path[-1]]])
    out[key] = (path, var)
  return out


def _to_torch(value: np.ndarray, key: str) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2 and not key.endswith("relative_position_bias_table"):
    return value.T
  return value


def _window_of(table_shape) -> int:
  return (int(math.isqrt(int(table_shape[0]))) + 1) // 2


def normalize_state_dict_keys(state_dict, head="catnet"):
  """Strips `module.` prefixes (DataParallel) and adds `encoder.` to bare backbone keys."""
  sd = {}
  for k, v in state_dict.items():
    sd[k[len("module.") :] if k.startswith("module.") else k] = v
  if head is None and sd and not any(k.startswith(("encoder.", "decoder.")) for k in sd):
    sd = {f"encoder.{k}": v for k, v in sd.items()}
  return sd


def from_torch_state_dict(state_dict, hrformer_config=None, head="catnet", *, dtype="float32"):
  """Builds an MPC model (eval mode) from the reference's state dict (`{key: numpy array}`).

  `hrformer_config`: preset name or yacs-layout dict; `None` = HRT-base. `head`: `catnet`,
  `casiav2`, or `None` for a backbone-only (stage-1) checkpoint, whose head stays randomly
  initialised. Missing, unexpected or mis-shaped keys raise a ValueError that lists them.
  """
  sd = normalize_state_dict_keys(state_dict, head)
  if head is None:
    unexpected_head = sorted(k for k in sd if k.startswith("decoder."))
    if unexpected_head:
      raise ValueError(
        f"head=None (backbone only) but the state dict has {len(unexpected_head)} "
        f"decoder keys, e.g. {unexpected_head[:3]}; convert with --head catnet or --head casiav2 "
        "(head='catnet' / 'casiav2' in Python)"
      )
  # Every weight is replaced below, except a backbone-only checkpoint's head, which stays random.
  model = build_mpc(hrformer_config or "hrt_base", head or "catnet", dtype=dtype, random_init=head is None)
  ours = _flat_state(model)
  if head is None:
    ours = {k: v for k, v in ours.items() if not k.startswith("decoder.")}
  index_keys = {
    k.rsplit(".", 1)[0] + ".relative_position_index": _window_of(var.shape)
    for k, (_, var) in ours.items()
    if k.endswith("relative_position_bias_table")
  }

  missing = sorted(set(ours) - set(sd))
  unexpected = sorted(set(sd) - set(ours) - set(index_keys))
  mismatched = []
  for key, window in index_keys.items():
    if key not in sd:
      continue  # an older export may omit buffers; the index is computed anyway
    got = np.asarray(sd[key])
    want = relative_position_index(window)
    if got.shape != want.shape or not np.array_equal(got, want):
      mismatched.append(f"{key}: shape {tuple(got.shape)} does not hold the {window}x{window} window index")
  updates = {}
  for key, (path, var) in ours.items():
    if key not in sd:
      continue
    value = np.asarray(sd[key])
    if key.endswith("num_batches_tracked"):
      updates[path] = np.asarray(value, np.int32).reshape(())
      continue
    converted = _to_ours_checked(value, key, var.shape)
    if converted is None:
      mismatched.append(
        f"{key}: got {tuple(value.shape)}, expected {tuple(_to_torch(np.zeros(var.shape), key).shape)}"
      )
      continue
    updates[path] = converted.astype(np.float32)
  if missing or unexpected or mismatched:
    raise ValueError(_report(missing, unexpected, mismatched) + _hint(missing, mismatched, head))

  flat = nnx.to_flat_state(nnx.state(model))
  nnx.update(
    model,
    nnx.from_flat_state([(p, v.replace(jax.device_put(updates[p])) if p in updates else v) for p, v in flat]),
  )
  model.eval()
  return model


def _to_ours_checked(value, key, shape):
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2 and not key.endswith("relative_position_bias_table"):
    value = value.T
  return value if tuple(value.shape) == tuple(shape) else None


def _report(missing, unexpected, mismatched, limit=20):
  def block(title, items):
    if not items:
      return ""
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more

  return (
    "state dict does not match the model:"
    + block("missing keys", missing)
    + block("unexpected keys", unexpected)
    + block("mis-shaped keys", mismatched)
  )


def _hint(missing, mismatched, head) -> str:
  if missing and all(k.startswith("decoder.") for k in missing):
    return "\n  hint: backbone-only (stage-1) weights convert with --head none (head=None in Python)"
  if mismatched and all(k.startswith("decoder.") for k in mismatched):
    other = "casiav2" if head == "catnet" else "catnet"
    return f"\n  hint: the head has other widths: try --head {other} (head='{other}' in Python)"
  if any("relative_position" in k for k in mismatched):
    return "\n  hint: other attention window sizes: pass the model's own config with --hrformer-config"
  return ""


_TABLE = re.compile(r"^encoder\.stage(\d)\.\d+\.branches\.(\d+)\..*relative_position_bias_table$")


def windows_from_state_dict(state_dict, hrformer_config, head="catnet") -> tuple[dict, list[str]]:
  """`hrformer_config` (a yacs-layout dict) with the attention window sizes the state dict's
  relative-position tables hold; also the list of changes (`STAGEn.NUM_WINDOW_SIZES[b]: 7 -> 4`)."""
  cfg, changes = copy.deepcopy(hrformer_config), []
  for key, value in normalize_state_dict_keys(state_dict, head).items():
    m = _TABLE.match(key)
    stage = cfg.get(f"STAGE{m.group(1)}") if m else None
    if stage is None or "NUM_WINDOW_SIZES" not in stage or int(m.group(2)) >= len(stage["NUM_WINDOW_SIZES"]):
      continue
    sizes, b, window = stage["NUM_WINDOW_SIZES"], int(m.group(2)), _window_of(np.shape(value))
    if sizes[b] != window and (2 * window - 1) ** 2 == np.shape(value)[0]:
      changes.append(f"STAGE{m.group(1)}.NUM_WINDOW_SIZES[{b}]: {sizes[b]} -> {window}")
      sizes[b] = window
  return cfg, changes


def hrformer_config_arg(value: str):
  """`--hrformer-config`: a preset name, a yacs-layout JSON file, or a model's `model_config.json` (or its folder)."""
  path = pathlib.Path(value).expanduser()
  if path.is_dir():
    path = path / "model_config.json"
    if not path.is_file():
      raise FileNotFoundError(f"--hrformer-config {value}: no model_config.json in that folder")
  if not path.is_file():
    if value.endswith(".json") or "/" in value:
      raise FileNotFoundError(f"--hrformer-config {value}: no such file")
    return value
  try:
    cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"--hrformer-config {value}: not valid JSON ({e})") from None
  return cfg["hrformer_config"] if "hrformer_config" in cfg else cfg


def to_torch_state_dict(model) -> dict:
  """The model as the reference's state dict (`{key: numpy array}`, PyTorch layouts and dtypes)."""
  out = {}
  for key, (_, var) in _flat_state(model).items():
    value = np.asarray(var[...])
    if key.endswith("num_batches_tracked"):
      out[key] = value.astype(np.int64)
      continue
    out[key] = _to_torch(value, key)
    if key.endswith("relative_position_bias_table"):
      out[key.rsplit(".", 1)[0] + ".relative_position_index"] = relative_position_index(
        _window_of(value.shape)
      )
  return out


def load_state_dict_file(path) -> dict:
  """`{key: numpy array}` from a `.pth`/`.pt` (needs torch; loaded with `weights_only=True`, never
  an unrestricted unpickle), `.npz` or `.safetensors` file. Nested `state_dict`/`model` entries
  are unwrapped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file not found: {path}")
  suffix = path.suffix.lower()
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      sd = {k: data[k] for k in data.files}
  elif suffix == ".safetensors":
    from safetensors.numpy import load_file

    sd = load_file(str(path))
  elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(
        f"reading {path} needs PyTorch: pip install 'mpc-jax[torch]', or convert it "
        "to .npz/.safetensors elsewhere"
      ) from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "net"):
      if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
        obj = obj[wrapper]
    sd = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
  else:
    raise ValueError(f"{path}: unsupported weights format {suffix!r} (use .pth, .npz or .safetensors)")
  if not sd:
    raise ValueError(f"{path}: no arrays found")
  return sd


def export_npz(model, path) -> None:
  """Writes the PyTorch-keyed state dict of `model` to `path` (.npz)."""
  np.savez(path, **to_torch_state_dict(model))


def cli_main(argv) -> int:
  from mpc_jax.main import add_common_args
  from mpc_jax.models import get_hrformer_config

  parser = argparse.ArgumentParser(prog="mpc-jax convert", description=__doc__.splitlines()[0])
  parser.add_argument("input", help="official weights: .pth (needs torch), .npz or .safetensors")
  parser.add_argument("--out", required=True, help="output directory (an mpc-jax model checkpoint)")
  parser.add_argument(
    "--head",
    default="catnet",
    choices=["catnet", "casiav2", "none"],
    help="localization head of the weights; 'none' for a stage-1 backbone checkpoint",
  )
  parser.add_argument(
    "--hrformer-config",
    default="hrt_base",
    help="preset name (hrt_base, hrt_small, hrt_base_win13, hrt_base_win15, hrt_tiny), a JSON "
    "file with the yacs layout, or a model's model_config.json (or its folder); the "
    "attention window sizes are taken from the weights",
  )
  parser.add_argument(
    "--input-size",
    type=int,
    default=512,
    help="the image size the weights were trained at, recorded for eval/predict (512: the official ones)",
  )
  parser.add_argument("--export-npz", default=None, help="also write the round-trip export here")
  add_common_args(parser)
  args = parser.parse_args(argv)
  from mpc_jax.checkpoint import save_model

  head = None if args.head == "none" else args.head
  try:
    config = get_hrformer_config(hrformer_config_arg(args.hrformer_config))
    sd = load_state_dict_file(args.input)
    config, changes = windows_from_state_dict(sd, config, head)
    if changes:
      print(
        f"mpc-jax convert: note: window sizes taken from the weights ({'; '.join(changes)})", file=sys.stderr
      )
    model = from_torch_state_dict(sd, config, head)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"mpc-jax convert: error: {e}", file=sys.stderr)
    return 1
  training = {"input_size": args.input_size, "stage": "stage1" if head is None else "stage2"}
  save_model(model, args.out, training=training)
  print(f"converted {args.input} -> {args.out}")
  if head is None:
    print(
      "note: a backbone-only (stage-1) model: its head is untrained; use it as "
      "--config.stage2.init_from, not for predictions",
      file=sys.stderr,
    )
  if args.export_npz:
    export_npz(model, args.export_npz)
    print(f"exported PyTorch-keyed arrays -> {args.export_npz}")
  return 0
