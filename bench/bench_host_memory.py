"""Freed memory kept or given back (`mpc_jax.host_memory`): the stage-1 step and the forward, each setting
in its own fresh process.

  python bench/bench_host_memory.py [--config hrt_base] [--what stage1,forward] [--size 256]
         [--forward-size 512] [--batch 2] [--repeats 3] [--out NAME]

Each (program, setting) runs in a new process with `MPC_JAX_RETAIN_FREED_MEMORY=0` (glibc's defaults)
or `=1` (what `mpc-jax train/eval/predict` set on the CPU): build, compile (read from JAX's persistent
cache, which one more process fills first, so both settings run the same kind of process: a restarted
run), one warm-up call, then `--repeats` timed calls, each with its minor page faults and kernel CPU
seconds (`getrusage`). The process's peak RSS is read at its end. Writes bench/results/NAME.json
(default `host_memory_PLATFORM`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CHILD = "--child"


def _child(what: str, config: str, size: int, batch: int, repeats: int) -> dict:
  """Times `what` in this process (the setting was chosen by the environment before `common` loaded);
  with `repeats` 0 only compiles it (into JAX's persistent cache)."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import jax
  from common import RETAINED_FREED_MEMORY, compile_forward, step_runner

  from mpc_jax import compile_cache, distributed

  compile_cache.enable()
  if what == "stage1":
    from bench_train import _compile, step_args

    args = step_args(config, batch)
    mesh = distributed.make_mesh(1)
    with jax.set_mesh(mesh):
      compiled, state, arrays, _, _ = _compile(args, "stage1", size, False, mesh)
      if not repeats:
        return {}
      call = step_runner(compiled, state, arrays)
      return _timed_calls(call, repeats, RETAINED_FREED_MEMORY)
  f = compile_forward(config, size)
  if not repeats:
    return {}
  return _timed_calls(lambda: f["compiled"](*f["args"]), repeats, RETAINED_FREED_MEMORY)


def _timed_calls(call, repeats: int, retained: bool) -> dict:
  import jax

  t = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - t
  seconds, faults, kernel = [], [], []
  for _ in range(repeats):
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    jax.block_until_ready(call())
    seconds.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults.append(after.ru_minflt - before.ru_minflt)
    kernel.append(after.ru_stime - before.ru_stime)
  return {
    "retained": retained,
    "first_call_s": first,
    "median_s": statistics.median(seconds),
    "runs_s": [round(s, 3) for s in seconds],
    "faults_per_call": statistics.median(faults),
    "max_faults_per_call": max(faults),
    "kernel_s_per_call": statistics.median(kernel),
    "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
  }


def _run_child(what: str, retain: str, args, size: int, repeats: int) -> dict:
  env = {**os.environ, "MPC_JAX_RETAIN_FREED_MEMORY": retain}
  cmd = [sys.executable, os.path.abspath(__file__), CHILD, what, args.config, str(size), str(args.batch)]
  proc = subprocess.run(cmd + [str(repeats)], capture_output=True, text=True, env=env)
  if proc.returncode != 0:
    raise SystemExit(f"bench_host_memory: the {what} process failed: {proc.stderr.strip().splitlines()[-1:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="hrt_base", help="HRFormer preset")
  p.add_argument("--what", default="stage1,forward", help="stage1 and/or forward, comma-separated")
  p.add_argument("--size", type=int, default=256, help="stage-1 step input side")
  p.add_argument("--forward-size", type=int, default=512, help="forward input side (batch 1)")
  p.add_argument("--batch", type=int, default=2, help="stage-1 step global batch")
  p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up call")
  p.add_argument("--out", default="", help="results name (default host_memory_PLATFORM)")
  args = p.parse_args(argv)
  whats = [w.strip() for w in args.what.split(",") if w.strip()]
  bad = [w for w in whats if w not in ("stage1", "forward")]
  if bad or not whats:
    p.error(f"--what {args.what!r}: use stage1 and/or forward")
  if args.repeats < 1:
    p.error(f"--repeats {args.repeats}: must be at least 1")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import jax
  from common import report

  rows = []
  for what in whats:
    # A process that compiled a program runs it slower than one that read it from the cache (with the
    # memory kept: 11-13 s against 9-10 s per stage-1 step); so one process compiles first, and both
    # timed processes read the cache.
    side = args.size if what == "stage1" else args.forward_size
    _run_child(what, "1", args, side, 0)
    base = None
    for retain, label in (("0", "glibc's defaults"), ("1", "freed memory kept")):
      got = _run_child(what, retain, args, side, args.repeats)
      row = {
        "program": "stage-1 step" if what == "stage1" else "forward (eval)",
        "input": f"{args.batch if what == 'stage1' else 1}x{side}x{side}",
        "malloc": label,
        **got,
      }
      base = base or row
      row["speed_vs_defaults"] = base["median_s"] / row["median_s"]
      rows.append(row)
      print(row, flush=True)
  report(
    args.out or f"host_memory_{jax.devices()[0].platform}",
    rows,
    [
      "program",
      "input",
      "malloc",
      "first_call_s",
      "median_s",
      "faults_per_call",
      "kernel_s_per_call",
      "peak_rss_GiB",
      "speed_vs_defaults",
    ],
    {
      "first_call_s": "s",
      "median_s": "s",
      "runs_s": "s",
      "faults_per_call": "minor page faults per timed call (median)",
      "max_faults_per_call": "minor page faults, most in one timed call",
      "kernel_s_per_call": "s of kernel CPU time per timed call (median)",
      "peak_rss_GiB": "GiB (2**30 bytes), the process's peak resident memory",
      "speed_vs_defaults": "median with glibc's defaults / this median",
    },
    extra={"config": args.config},
  )


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == CHILD:
    what, config, size, batch, repeats = sys.argv[2:7]
    print(json.dumps(_child(what, config, int(size), int(batch), int(repeats))))
  else:
    main()
