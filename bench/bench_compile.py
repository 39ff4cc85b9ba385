"""Compile time of the tests' tiny stage-1 step and of the HRT-base forward under XLA:CPU options.

  python bench/bench_compile.py [--flags default,tests] [--forward-size 512] [--out NAME]

Each (program, option set) runs in a fresh process with a fresh compilation cache: build, `lower()`,
`compile()`, then the first call and, for the forward, the median of 3 calls. Option sets:
`default` (XLA's), `tests` (`tests/train_testlib.TEST_XLA_FLAGS`, what the test suite compiles
with). The tiny step is the training tests' (`train_testlib.tiny_config`, 8 simulated devices,
global batch 8 at 32 px); the forward is HRT-base in eval mode, batch 1. Prints a table and
writes bench/results/NAME.json (default `compile_cpu`).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import report  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from mpc_jax import distributed, steps, train, train_state
what, size = sys.argv[1], int(sys.argv[3])
out = {}
t = time.perf_counter()
if what == "tiny_stage1_step":
  from train_testlib import tiny_config
  c = tiny_config()
  mesh = distributed.make_mesh()
  with jax.set_mesh(mesh):
    state, parts = train_state.create_state(train.build_model(c), c.stage1, mesh)
    fn = steps.make_step("stage1", parts, c, mesh)
    b, s = c.stage1.batch_size, c.data.input_size
    mask = np.zeros((b, s // 4, s // 4), np.float32)
    mask[:, : s // 8] = 1
    rng = np.random.default_rng(0)
    args = (state, distributed.global_batch({"image": rng.random((b, s, s, 3), np.float32), "mask": mask}, mesh))
    out["build_s"] = time.perf_counter() - t
    t = time.perf_counter(); lowered = fn.lower(*args); out["lower_s"] = time.perf_counter() - t
    t = time.perf_counter(); compiled = lowered.compile(); out["compile_s"] = time.perf_counter() - t
    t = time.perf_counter(); jax.block_until_ready(compiled(*args)); out["first_call_s"] = time.perf_counter() - t
else:
  from mpc_jax.models import build_mpc
  model = build_mpc("hrt_base")
  model.eval()
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
  args = (state, jnp.asarray(np.random.default_rng(0).random((1, size, size, 3)), jnp.float32))
  out["build_s"] = time.perf_counter() - t
  t = time.perf_counter(); lowered = fn.lower(*args); out["lower_s"] = time.perf_counter() - t
  t = time.perf_counter(); compiled = lowered.compile(); out["compile_s"] = time.perf_counter() - t
  t = time.perf_counter(); jax.block_until_ready(compiled(*args)); out["first_call_s"] = time.perf_counter() - t
  times = []
  for _ in range(3):
    t = time.perf_counter(); jax.block_until_ready(compiled(*args)); times.append(time.perf_counter() - t)
  out["median_s"] = sorted(times)[1]
print(json.dumps(out))
"""


def _flags(name: str) -> str:
  if name == "default":
    return ""
  if name == "tests":
    sys.path.insert(0, str(ROOT / "tests"))
    from train_testlib import TEST_XLA_FLAGS

    return TEST_XLA_FLAGS
  raise SystemExit(f"bench_compile: unknown option set {name!r} (use default, tests)")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--flags", default="default,tests", help="option sets, comma-separated")
  p.add_argument("--programs", default="tiny_stage1_step,hrt_base_forward")
  p.add_argument("--forward-size", type=int, default=512)
  p.add_argument("--out", default="compile_cpu")
  args = p.parse_args()
  rows = []
  for program in args.programs.split(","):
    for name in args.flags.split(","):
      devices = 8 if program == "tiny_stage1_step" else 1
      env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {_flags(name)}".strip()
      with tempfile.TemporaryDirectory() as cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        proc = subprocess.run(
          [sys.executable, "-c", _CHILD, program, str(ROOT / "tests"), str(args.forward_size)],
          env=env,
          capture_output=True,
          text=True,
        )
      if proc.returncode:
        raise SystemExit(f"bench_compile: {program} with {name} failed:\n{proc.stderr[-3000:]}")
      row = {"program": program, "options": name, **json.loads(proc.stdout.strip().splitlines()[-1])}
      print(row, flush=True)
      rows.append(row)
  cols = ["program", "options", "build_s", "lower_s", "compile_s", "first_call_s", "median_s"]
  units = {k: "s" for k in cols[2:]}
  report(args.out, rows, cols, units, extra={"options": {n: _flags(n) for n in args.flags.split(",")}})


if __name__ == "__main__":
  main()
