"""The MPC forward of mpc-jax beside the PyTorch reference's, on this machine, in one run.

  python bench/bench_reference.py --reference PATH/TO/MPC [--size 512] [--repeats 3]
                                  [--depthwise auto,xla] [--out NAME]

PATH/TO/MPC is a checkout of github.com/multimediaFor/MPC, whose stage-2 model runs beside ours
(`reference_forward`): random weights, eval mode, float32, batch 1. Both sides report build, first call
and median of `--repeats` calls, mpc-jax also lower and compile. Writes bench/results/NAME.json (default
`reference_PLATFORM`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import compile_forward, report, time_fn  # noqa: E402

# What the reference needs besides torch, yacs and einops: two timm helpers, and a torchvision import the
# model file makes and its forward does not use.
REFERENCE_STUBS = r"""
import sys, types
import torch
try:
  import timm  # noqa: F401
except ImportError:  # the reference imports two helpers from timm
  timm = types.ModuleType("timm"); tm = types.ModuleType("timm.models"); tl = types.ModuleType("timm.models.layers")
  tl.to_2tuple = lambda x: x if isinstance(x, tuple) else (x, x)
  tl.trunc_normal_ = torch.nn.init.trunc_normal_
  timm.models, tm.layers = tm, tl
  sys.modules.update({"timm": timm, "timm.models": tm, "timm.models.layers": tl})
try:
  import torchvision  # noqa: F401  (imported by model.py, unused by the forward)
except Exception:
  tv = types.ModuleType("torchvision"); tv.models = types.ModuleType("torchvision.models")
  sys.modules.update({"torchvision": tv, "torchvision.models": tv.models})
"""

REFERENCE_SCRIPT = (
  REFERENCE_STUBS
  + r"""
import json, statistics, time
root, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, root + "/CATNet_dataset_train/stage2")
t0 = time.perf_counter()
from model import MyModel
model = MyModel().eval()
build = time.perf_counter() - t0
x = torch.rand(1, 3, size, size)
with torch.no_grad():
  t0 = time.perf_counter(); model(x); first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter(); model(x); times.append(time.perf_counter() - t0)
print(json.dumps(dict(build_s=build, first_call_s=first, median_s=statistics.median(times),
                      min_s=min(times), torch=torch.__version__, threads=torch.get_num_threads())))
"""
)


def reference_forward(root: str, size: int, repeats: int) -> dict:
  """Times the reference's stage-2 model (`CATNet_dataset_train/stage2/model.py`, HRFormer-base + head,
  `no_grad`) in a subprocess with the `torch`, `yacs` and `einops` of this Python (`pip install torch yacs
  einops`); timm is given the two helpers the reference imports from it when it is not installed."""
  proc = subprocess.run(
    [sys.executable, "-c", REFERENCE_SCRIPT, root, str(size), str(repeats)], capture_output=True, text=True
  )
  if proc.returncode != 0:
    raise SystemExit(f"bench_reference: the reference did not run: {proc.stderr.strip().splitlines()[-1:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def ours_forward(size: int, repeats: int, depthwise: str) -> dict:
  f = compile_forward("hrt_base", size, depthwise)
  t = time_fn(f["compiled"], *f["args"], repeats=repeats)
  return dict(
    build_s=f["build_s"],
    lower_s=f["lower_s"],
    compile_s=f["compile_s"],
    first_call_s=t["first_call_s"],
    median_s=t["median_s"],
    min_s=t["min_s"],
  )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--reference", required=True, help="a checkout of github.com/multimediaFor/MPC")
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--depthwise", default="auto,xla", help="mpc-jax depth-wise forms to time, comma-separated")
  p.add_argument("--out", default="", help="results name (default reference_PLATFORM)")
  args = p.parse_args(argv)
  if not (pathlib.Path(args.reference) / "CATNet_dataset_train/stage2/model.py").is_file():
    p.error(
      f"--reference {args.reference!r} is not a checkout of multimediaFor/MPC "
      "(no CATNet_dataset_train/stage2/model.py)"
    )
  rows = []
  ref = reference_forward(args.reference, args.size, args.repeats)
  rows.append(
    dict(
      impl=f"reference (torch {ref['torch']}, {ref['threads']} threads)",
      **{k: ref[k] for k in ("build_s", "first_call_s", "median_s", "min_s")},
    )
  )
  for depthwise in args.depthwise.split(","):
    rows.append(
      dict(impl=f"mpc-jax, depthwise={depthwise}", **ours_forward(args.size, args.repeats, depthwise))
    )
  for row in rows:
    row["speed_vs_reference"] = ref["median_s"] / row["median_s"]
    row["input"] = f"1x{args.size}x{args.size}"
  report(
    args.out or f"reference_{jax.devices()[0].platform}",
    rows,
    ["impl", "input", "build_s", "lower_s", "compile_s", "first_call_s", "median_s", "speed_vs_reference"],
    {
      "build_s": "s",
      "lower_s": "s",
      "compile_s": "s",
      "first_call_s": "s",
      "median_s": "s",
      "min_s": "s",
      "speed_vs_reference": "reference median / this median",
    },
  )


if __name__ == "__main__":
  main()
