"""The MPC forward and stage-1 step of mpc-jax beside the PyTorch reference's, on this machine, in one run.

  python bench/bench_reference.py --reference PATH/TO/MPC [--what forward] [--size 512] [--repeats 3]
                                  [--depthwise auto,xla] [--out NAME]
  python bench/bench_reference.py --reference PATH/TO/MPC --what stage1 --size 256 --batch 2

PATH/TO/MPC is a checkout of github.com/multimediaFor/MPC. `--what forward` runs its stage-2 model beside
ours (`reference_forward`): random weights, eval mode, float32, batch 1. `--what stage1` runs its
stage-1 training step beside ours (`reference_stage1_step`): two train-mode passes, the supervised
InfoNCE loss, AdamW. On a GPU the reference runs on CUDA (its float32 defaults), beside ours on the
same GPU. Both sides report build, first call and median of `--repeats` calls, mpc-jax also
lower and compile. Writes bench/results/NAME.json (default `reference_PLATFORM`, or
`reference_stage1_PLATFORM`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import RETAINED_FREED_MEMORY, compile_forward, report, step_runner, time_fn  # noqa: E402

from mpc_jax import host_memory  # noqa: E402

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
root, size, repeats, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sys.path.insert(0, root + "/CATNet_dataset_train/stage2")
t0 = time.perf_counter()
from model import MyModel
model = MyModel().eval().to(device)
build = time.perf_counter() - t0
x = torch.rand(1, 3, size, size, device=device)
with torch.no_grad():
  t0 = time.perf_counter(); model(x); sync(); first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter(); model(x); sync(); times.append(time.perf_counter() - t0)
print(json.dumps(dict(build_s=build, first_call_s=first, median_s=statistics.median(times),
                      min_s=min(times), torch=torch.__version__, threads=torch.get_num_threads())))
"""
)


REFERENCE_STAGE1_SCRIPT = (
  REFERENCE_STUBS
  + r"""
import json, statistics, time
import torch.nn.functional as F
root, size, batch, repeats, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, root + "/CATNet_dataset_train/stage1")
t0 = time.perf_counter()
from HRFormer.hrt_backbone import HighResolutionTransformer
from HRFormer.hrt_config import MODEL_CONFIGS
from losses import MyLoss
torch.manual_seed(0)
net = HighResolutionTransformer(MODEL_CONFIGS["hrt_base"]).train().to(device)
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
build = time.perf_counter() - t0
x = torch.rand(batch, 3, size, size, device=device)
gt = torch.zeros(batch, size // 4, size // 4, device=device)
gt[:, : size // 8] = 1.0  # top half forged, as bench_train's batch

def step():  # stage1/train.py's MPC.process(isTrain=True)
  opt.zero_grad()
  fx = [F.normalize(f.permute(0, 2, 3, 1), dim=3) for f in net(x)]
  fy = [F.normalize(f.permute(0, 2, 3, 1), dim=3) for f in net(x)]
  loss = torch.stack([MyLoss([f[i] for f in fx], [f[i] for f in fy], gt[i]) for i in range(batch)]).mean()
  loss.backward()
  opt.step()
  return float(loss)

t0 = time.perf_counter(); loss = step(); first = time.perf_counter() - t0
times = []
for _ in range(repeats):
  t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps(dict(build_s=build, first_call_s=first, median_s=statistics.median(times), min_s=min(times),
                      loss=loss, torch=torch.__version__, threads=torch.get_num_threads())))
"""
)


def reference_stage1_step(
  root: str, size: int, batch: int, repeats: int, env: dict | None = None, device: str = "cpu"
) -> dict:
  """Times the reference's stage-1 step (its `stage1/` HRFormer-base, two passes, `losses.MyLoss` per
  image with 5000 sampled pixels per set, AdamW) in a subprocess, as `reference_forward`."""
  return _run_reference(REFERENCE_STAGE1_SCRIPT, root, size, batch, repeats, device, env=env)


def ours_stage1_step(size: int, batch: int, repeats: int, depthwise: str) -> dict:
  """Our stage-1 step as `bench/bench_train.py` builds it (HRT-base, 5000 sampled pixels per set)."""
  from bench_train import _compile, step_args

  from mpc_jax import distributed

  args = step_args("hrt_base", batch, depthwise)
  mesh = distributed.make_mesh(1)
  t = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled, state, batch_arrays, times, _ = _compile(args, "stage1", size, False, mesh)
    build_s = time.perf_counter() - t - times["lower_s"] - times["compile_s"]
    timing = time_fn(step_runner(compiled, state, batch_arrays), repeats=repeats)
  return dict(build_s=build_s, **times, **timing)


def _run_reference(script: str, *argv, env: dict | None = None) -> dict:
  """The reference `script` run with `argv` in a new Python process (`env` added to its environment):
  the JSON object its last output line holds."""
  env = {**os.environ, **env} if env else None
  proc = subprocess.run(
    [sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True, env=env
  )
  if proc.returncode != 0:
    raise SystemExit(f"bench_reference: the reference did not run: {proc.stderr.strip().splitlines()[-1:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def reference_forward(
  root: str, size: int, repeats: int, env: dict | None = None, device: str = "cpu"
) -> dict:
  """Times the reference's stage-2 model (`CATNet_dataset_train/stage2/model.py`, HRFormer-base + head,
  `no_grad`) in a subprocess with the `torch`, `yacs` and `einops` of this Python (`pip install torch yacs
  einops`); timm is given the two helpers the reference imports from it when it is not installed.
  `device`: torch's, `cpu` or `cuda` (timed to the end of its kernels)."""
  return _run_reference(REFERENCE_SCRIPT, root, size, repeats, device, env=env)


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
  p.add_argument("--what", default="forward", choices=("forward", "stage1"), help="the program to time")
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--batch", type=int, default=2, help="stage-1 step batch (the forward runs batch 1)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--depthwise", default="auto,xla", help="mpc-jax depth-wise forms to time, comma-separated")
  p.add_argument(
    "--out", default="", help="results name (default reference_PLATFORM / reference_stage1_PLATFORM)"
  )
  p.add_argument(
    "--cache-dir",
    default="",
    help="JAX's persistent compilation cache for mpc-jax's programs (default: none, each run compiles "
    "them); one that an earlier run filled times mpc-jax as a restarted run, which reads them",
  )
  args = p.parse_args(argv)
  if args.cache_dir:
    from mpc_jax import compile_cache

    compile_cache.enable(args.cache_dir)
  if not (pathlib.Path(args.reference) / "CATNet_dataset_train/stage2/model.py").is_file():
    p.error(
      f"--reference {args.reference!r} is not a checkout of multimediaFor/MPC "
      "(no CATNet_dataset_train/stage2/model.py)"
    )
  stage1 = args.what == "stage1"
  platform = jax.devices()[0].platform
  device = "cuda" if platform == "gpu" else "cpu"
  rows = []
  # The reference as published, then (on the CPU) with glibc's malloc set as mpc-jax sets it for itself
  # (`mpc_jax.host_memory`), so that the comparison shows what that setting alone gives either side.
  mallocs = [("", None)]
  if device == "cpu":
    mallocs.append((", malloc as mpc-jax sets it", {"GLIBC_TUNABLES": host_memory.GLIBC_TUNABLES}))
  for malloc, env in mallocs:
    if stage1:
      got = reference_stage1_step(args.reference, args.size, args.batch, args.repeats, env, device)
    else:
      got = reference_forward(args.reference, args.size, args.repeats, env, device)
    rows.append(
      dict(
        impl=f"reference (torch {got['torch']}, {got['threads']} threads{malloc})",
        **{k: got[k] for k in ("build_s", "first_call_s", "median_s", "min_s")},
      )
    )
    print(rows[-1], flush=True)
  ref, ref_same_malloc = rows[0], rows[-1]
  for depthwise in args.depthwise.split(","):
    if stage1:
      ours = ours_stage1_step(args.size, args.batch, args.repeats, depthwise)
    else:
      ours = ours_forward(args.size, args.repeats, depthwise)
    by = {"child": ", compiled by a child process", "cache": ", read from the compilation cache"}
    note = by.get(ours.get("compiled_by"), "")
    ours = {k: ours[k] for k in ("build_s", "lower_s", "compile_s", "first_call_s", "median_s", "min_s")}
    malloc = "" if RETAINED_FREED_MEMORY or device != "cpu" else ", malloc as glibc sets it"
    rows.append(dict(impl=f"mpc-jax, depthwise={depthwise}{malloc}{note}", **ours))
    print(rows[-1], flush=True)
  for row in rows:
    row["speed_vs_reference"] = ref["median_s"] / row["median_s"]
    row["speed_vs_reference_same_malloc"] = ref_same_malloc["median_s"] / row["median_s"]
    row["input"] = f"{args.batch if stage1 else 1}x{args.size}x{args.size}"
  report(
    args.out or (f"reference_stage1_{platform}" if stage1 else f"reference_{platform}"),
    rows,
    [
      "impl",
      "input",
      "build_s",
      "lower_s",
      "compile_s",
      "first_call_s",
      "median_s",
      "speed_vs_reference",
      "speed_vs_reference_same_malloc",
    ],
    {
      "build_s": "s",
      "lower_s": "s",
      "compile_s": "s",
      "first_call_s": "s",
      "median_s": "s",
      "min_s": "s",
      "speed_vs_reference": "reference median / this median",
      "speed_vs_reference_same_malloc": "median of the reference with mpc-jax's malloc setting / this median",
    },
    extra={"program": "stage-1 training step" if stage1 else "forward (eval)"},
  )


if __name__ == "__main__":
  main()
