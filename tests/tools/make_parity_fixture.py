"""Make a reference-parity fixture by running the public PyTorch MPC code (multimediaFor/MPC).

    python tests/tools/make_parity_fixture.py /path/to/MPC --out tests/fixtures --name parity_odd \
        --size 150 203 --batch 1 --seed 1 --small-size 45 71 --check ../shared/fixtures/parity_tiny.npz

The first argument is a checkout of github.com/multimediaFor/MPC. Nothing from it is copied here:
the script imports its stage-2 `HRFormer` backbone (`CATNet_dataset_train/stage2/HRFormer`) and
`decoder_head.Decoder`, builds the stage-2 model (`encoder` + `decoder`, as `model.MyModel` does)
for a small HRFormer config, randomises every weight, BatchNorm running statistic, LayerNorm
parameter and relative-position table, and runs it in eval mode in float32 on the CPU.

Needs torch and einops (`pip install /opt/wheels/torch-*cpu*.whl einops numpy` into a scratch venv;
torch is not a dependency of mpc-jax). The reference imports two helpers from timm
(`to_2tuple`, `trunc_normal_`, used for window sizes and initialisation); when timm is absent the
script supplies those two from torch (`torch.nn.init.trunc_normal_`), which changes no value here
because every parameter is overwritten afterwards.

The reference backbone fixes its 1x1 output convs (`convs.*`) to HRT-base's widths
(78, 156, 312, 624); for another config they are rebuilt with the reference's own `ConvModule`
at the config's stage-4 widths, as the released model has them for HRT-base.

`--check FIXTURE.npz` first loads that fixture's weights and input, runs them and requires every
output to match the stored one (relative error under 1e-6) before writing anything.

Writes `<name>.npz` (`state_dict/<key>`, `input_nchw`, `scale{0..3}_nchw`, `logits_nchw`, and with
`--small-size` also `small_input_nchw`, `small_scale{0..3}_nchw`, `small_logits_nchw`) and
`<name>.json` (`hrformer_config`, `input_hw`, `small_input_hw`, `seed`, `params`, `torch`,
`reference_commit`).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import types

import numpy as np

# The HRFormer config of parity_tiny: the HRT code path with fewer channels and modules.
TINY_CONFIG = {
  "DROP_PATH_RATE": 0.2,
  "STAGE1": {
    "NUM_MODULES": 1,
    "NUM_BRANCHES": 1,
    "NUM_BLOCKS": [1],
    "NUM_CHANNELS": [16],
    "BLOCK": "BOTTLENECK",
  },
  "STAGE2": {
    "NUM_MODULES": 1,
    "NUM_BRANCHES": 2,
    "NUM_BLOCKS": [1, 1],
    "NUM_CHANNELS": [16, 32],
    "NUM_HEADS": [1, 2],
    "NUM_MLP_RATIOS": [4, 4],
    "NUM_WINDOW_SIZES": [7, 7],
    "BLOCK": "TRANSFORMER_BLOCK",
  },
  "STAGE3": {
    "NUM_MODULES": 1,
    "NUM_BRANCHES": 3,
    "NUM_BLOCKS": [1, 1, 1],
    "NUM_CHANNELS": [16, 32, 64],
    "NUM_HEADS": [1, 2, 4],
    "NUM_MLP_RATIOS": [4, 4, 4],
    "NUM_WINDOW_SIZES": [7, 7, 7],
    "BLOCK": "TRANSFORMER_BLOCK",
  },
  "STAGE4": {
    "NUM_MODULES": 2,
    "NUM_BRANCHES": 4,
    "NUM_BLOCKS": [1, 1, 1, 1],
    "NUM_CHANNELS": [16, 32, 64, 128],
    "NUM_HEADS": [1, 2, 4, 8],
    "NUM_MLP_RATIOS": [4, 4, 4, 4],
    "NUM_WINDOW_SIZES": [7, 7, 7, 7],
    "BLOCK": "TRANSFORMER_BLOCK",
  },
}


def import_reference(ref_root: pathlib.Path):
  """Imports the reference stage-2 modules; returns (torch, hrt_backbone module, Decoder class)."""
  stage2 = ref_root / "CATNet_dataset_train" / "stage2"
  if not (stage2 / "HRFormer" / "hrt_backbone.py").is_file():
    sys.exit(f"error: {stage2}/HRFormer/hrt_backbone.py not found; pass a checkout of multimediaFor/MPC")
  import torch

  try:
    import timm.models.layers  # noqa: F401
  except ImportError:
    layers = types.ModuleType("timm.models.layers")
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    for name in ("timm", "timm.models"):
      sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["timm.models.layers"] = layers
  sys.path.insert(0, str(stage2))
  from HRFormer import hrt_backbone
  from decoder_head import Decoder

  return torch, hrt_backbone, Decoder


def build_model(torch, hrt_backbone, Decoder, config):
  """The stage-2 model (`encoder.*`, `decoder.*`) for `config`, with the output convs at its widths."""
  encoder = hrt_backbone.HighResolutionTransformer(config)
  widths = [
    c * hrt_backbone.blocks_dict[config["STAGE4"]["BLOCK"]].expansion
    for c in config["STAGE4"]["NUM_CHANNELS"]
  ]
  encoder.convs = torch.nn.ModuleList(
    [hrt_backbone.ConvModule(in_channels=c, out_channels=256, kernel_size=(1, 1), stride=1) for c in widths]
  )
  model = torch.nn.Module()
  model.encoder = encoder
  model.decoder = Decoder()
  return model


def randomise(torch, model, seed):
  """Overwrites every float parameter and buffer with seeded random values of a plausible scale.

  Conv/linear weights: uniform in +-sqrt(3 / fan_in) (unit-variance outputs for unit inputs);
  biases: N(0, 0.1); norm weights 1 + N(0, 0.1), norm biases N(0, 0.1); BatchNorm running means
  N(0, 0.1), running variances uniform in [0.5, 1.5]; relative-position tables N(0, 1).
  """
  gen = torch.Generator().manual_seed(seed)
  norms = (torch.nn.BatchNorm2d, torch.nn.LayerNorm)
  with torch.no_grad():
    for module in model.modules():
      for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if not t.is_floating_point():
          continue
        normal = lambda std, t=t: torch.randn(t.shape, generator=gen) * std
        if name == "relative_position_bias_table":
          value = normal(1.0)
        elif isinstance(module, norms) and name == "weight":
          value = 1.0 + normal(0.1)
        elif name == "running_var":
          value = 0.5 + torch.rand(t.shape, generator=gen)
        elif name in ("bias", "running_mean"):
          value = normal(0.1)
        elif name == "weight":
          fan_in = int(np.prod(t.shape[1:]))
          bound = (3.0 / fan_in) ** 0.5
          value = (torch.rand(t.shape, generator=gen) * 2 - 1) * bound
        else:
          sys.exit(f"error: no randomisation rule for {type(module).__name__}.{name}")
        t.copy_(value)


def run(torch, model, images_nchw):
  """Returns (scale0..3 after the 1x1 ConvModules, logits) as float32 NCHW numpy arrays."""
  captured = {}
  hooks = [
    conv.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, out))
    for i, conv in enumerate(model.encoder.convs)
  ]
  with torch.no_grad():
    logits = model.decoder(model.encoder(torch.from_numpy(images_nchw)))
  for h in hooks:
    h.remove()
  return [captured[i].numpy() for i in range(4)], logits.numpy()


def rel_err(got, ref):
  return float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))


def check_existing(torch, hrt_backbone, Decoder, npz_path):
  """Reruns a stored fixture's weights and input; exits unless every output matches to 1e-6."""
  data = np.load(npz_path)
  meta = json.loads(npz_path.with_suffix(".json").read_text())
  model = build_model(torch, hrt_backbone, Decoder, meta["hrformer_config"]).eval()
  sd = {
    k[len("state_dict/") :]: torch.from_numpy(np.array(data[k]))
    for k in data.files
    if k.startswith("state_dict/")
  }
  model.load_state_dict(sd, strict=True)
  scales, logits = run(torch, model, data["input_nchw"])
  errs = [rel_err(s, data[f"scale{i}_nchw"]) for i, s in enumerate(scales)] + [
    rel_err(logits, data["logits_nchw"])
  ]
  print(f"check {npz_path.name}: relative errors scale0..3, logits = " + ", ".join(f"{e:.2e}" for e in errs))
  if max(errs) > 1e-6:
    sys.exit(f"error: the reference run does not reproduce {npz_path} (max relative error {max(errs):.2e})")


def reference_commit(ref_root):
  out = subprocess.run(["git", "-C", str(ref_root), "rev-parse", "HEAD"], capture_output=True, text=True)
  return out.stdout.strip() if out.returncode == 0 else None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("reference", type=pathlib.Path, help="checkout of github.com/multimediaFor/MPC")
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[1] / "fixtures")
  p.add_argument("--name", default="parity_odd")
  p.add_argument("--size", type=int, nargs=2, default=[150, 203], metavar=("H", "W"))
  p.add_argument("--batch", type=int, default=1)
  p.add_argument(
    "--small-size",
    type=int,
    nargs=2,
    default=None,
    metavar=("H", "W"),
    help="also store a second, batch-1 case at this size (keys small_*)",
  )
  p.add_argument("--seed", type=int, default=1)
  p.add_argument(
    "--reference-commit",
    default=None,
    help="the reference's commit, when the checkout is not a git work tree",
  )
  p.add_argument(
    "--check", type=pathlib.Path, default=None, help="an existing fixture .npz to reproduce first"
  )
  args = p.parse_args(argv)

  torch, hrt_backbone, Decoder = import_reference(args.reference)
  torch.set_default_dtype(torch.float32)
  if args.check is not None:
    check_existing(torch, hrt_backbone, Decoder, args.check)

  torch.manual_seed(args.seed)
  model = build_model(torch, hrt_backbone, Decoder, TINY_CONFIG)
  randomise(torch, model, args.seed)
  model.eval()
  rng = np.random.default_rng(args.seed)
  arrays = {f"state_dict/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}
  cases = [("", args.batch, args.size)] + ([("small_", 1, args.small_size)] if args.small_size else [])
  for prefix, batch, (h, w) in cases:
    images = rng.random((batch, 3, h, w), dtype=np.float32)
    scales, logits = run(torch, model, images)
    arrays[f"{prefix}input_nchw"] = images
    for i, s in enumerate(scales):
      arrays[f"{prefix}scale{i}_nchw"] = s
    arrays[f"{prefix}logits_nchw"] = logits
    print(
      f"{prefix or 'main '}case {images.shape}: scales "
      + ", ".join(str(s.shape) for s in scales)
      + f", logits {logits.shape}"
    )
  meta = {
    "hrformer_config": TINY_CONFIG,
    "input_hw": list(args.size),
    "small_input_hw": list(args.small_size) if args.small_size else None,
    "seed": args.seed,
    "params": int(sum(p.numel() for p in model.parameters())),
    "torch": torch.__version__,
    "reference_commit": args.reference_commit or reference_commit(args.reference),
  }
  args.out.mkdir(parents=True, exist_ok=True)
  np.savez(args.out / f"{args.name}.npz", **arrays)
  (args.out / f"{args.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
  print(f"wrote {args.out / args.name}.npz/.json ({meta['params']} parameters)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
