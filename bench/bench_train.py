"""Training step time of the real stage-1 / stage-2 steps (`mpc_jax.train`), and their memory.

  python bench/bench_train.py [--config hrt_base] [--sizes 256,512] [--batch 2] [--repeats 3]
         [--stages stage1,stage2] [--memory-size 512] [--num-samples 5000] [--dtype float32]
         [--remat-sizes 512] [--depthwise xla] [--peak-tflops X] [--out NAME]

Per stage and input size, the jitted step (train state donated, batch sharded over all devices) is
compiled ahead of time (timed), warmed up, then run `--repeats` times: median step time, images/s, XLA's
FLOPs (`_flops`) and memory (`_memory`), MFU on known GPUs (`_peak_tflops`); `main` says how remat is
measured. Prints each row as it is measured, then a table, and writes bench/results/NAME.json.
"""

import argparse
import json
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import RESULTS, machine, report, step_runner, time_fn, write_result  # noqa: E402

from mpc_jax import compile_cache, distributed, steps, train, train_state  # noqa: E402
from mpc_jax.models import count_params  # noqa: E402
from mpc_jax.train_config import base_config  # noqa: E402


def step_args(config: str = "hrt_base", batch: int = 2, depthwise: str = "auto") -> argparse.Namespace:
  """The arguments `_compile` reads, as this bench's defaults give them (float32, 5000 sampled pixels
  per set), for other benches that time the same step."""
  return argparse.Namespace(
    config=config, dtype="float32", depthwise=depthwise, batch=batch, num_samples=5000, stage2_trainable=""
  )


def _config(args, size, remat):
  c = base_config()
  c.model.hrformer = args.config
  c.model.dtype = args.dtype
  c.model.remat = bool(remat)
  c.model.depthwise = args.depthwise
  c.data.input_size = size
  for s in ("stage1", "stage2"):
    c[s].batch_size = args.batch
  c.stage1.loss.num_samples = args.num_samples
  if args.stage2_trainable:
    c.stage2.trainable = args.stage2_trainable
  return c


def _batch(size, batch, mesh):
  """Random images and top-half-forged masks: every pixel set of the stage-1 loss is populated (it samples
  `--num-samples` pixels per set, the reference's 5000)."""
  rng = np.random.default_rng(0)
  image = rng.random((batch, size, size, 3), np.float32)
  mask = np.zeros((batch, size // 4, size // 4), np.float32)
  mask[:, : size // 8] = 1.0  # top half forged: every pixel set of the loss is populated
  return distributed.global_batch({"image": image, "mask": mask}, mesh)


# Dense peak TFLOP/s per device (vendor data sheets): bfloat16 tensor cores, and float32 matmuls as XLA
# runs them on these GPUs by default (TF32 tensor cores). Unknown devices (CPUs): no MFU column.
_PEAKS = {
  "H100": {"bfloat16": 989.0, "float32": 494.0},
  "H200": {"bfloat16": 989.0, "float32": 494.0},
  "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def _peak_tflops(dtype):
  """This device's dense peak TFLOP/s for `dtype` (0: unknown, no MFU column). MFU is XLA's FLOPs per
  second over this peak (bfloat16, or TF32 for float32)."""
  kind = jax.devices()[0].device_kind
  for name, peaks in _PEAKS.items():
    if name in kind:
      return peaks[dtype]
  return 0.0


def _flops(compiled):
  """XLA's FLOP count of the compiled step (`cost_analysis()`; None where the backend reports none).

  XLA counts a loop body once, so the stage-1 loss's chunk loop (`lax.map`) counts as one chunk: the
  FLOP and MFU columns are lower bounds (the loss runs 4 chunks of 1024 negatives at 256 px, 5 at 512).
  """
  try:
    ca = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend reports costs
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  return float(ca["flops"]) if ca and "flops" in ca else None


def _memory(compiled):
  """XLA's memory analysis of the compiled step per device: arguments + outputs - aliased (donated) +
  temporaries, the buffers XLA allocates (not the process RSS)."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  arg, out, alias, temp = (
    int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")
  )
  return {"args_MiB": arg / 2**20, "temp_MiB": temp / 2**20, "peak_MiB": (arg + out - alias + temp) / 2**20}


def _process_peak_gib():
  """The device's peak bytes in use so far in this process (GPUs/TPUs; None where unreported)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def _compile(args, stage, size, remat, mesh):
  config = _config(args, size, remat)
  model = train.build_model(config)
  state, parts = train_state.create_state(model, config[stage], mesh)
  step = steps.make_step(stage, parts, config, mesh)
  batch = _batch(size, args.batch, mesh)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  t1 = time.perf_counter()
  compiled, where = compile_cache.compile_in_child(lowered)  # as `mpc-jax train` compiles its steps
  times = {"lower_s": t1 - t0, "compile_s": time.perf_counter() - t1, "compiled_by": where}
  return compiled, state, batch, times, count_params(model)


def main():
  """At `--memory-size` (0 skips) the stage-1 step is also compiled, not run, with and without
  rematerialisation (`config.model.remat`: every stage-1 bottleneck and HRModule of the backbone under
  `nnx.remat`); stage 2, with the backbone frozen, stores no backbone activations, so remat changes
  nothing there. Timed stage-1 rows at `--remat-sizes` run rematerialised (sizes whose plain step does not
  fit in memory). On the CPU the bench keeps XLA's remat barriers (`distributed.keep_remat_barriers_on_cpu`,
  recorded in the JSON), without which XLA:CPU undoes every `jax.checkpoint`, the loss's chunked
  log-sum-exp included."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="hrt_base", help="HRFormer preset (config.model.hrformer)")
  p.add_argument("--sizes", default="256,512", help="input sides, comma-separated")
  p.add_argument("--batch", type=int, default=2, help="global batch")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--stages", default="stage1,stage2")
  p.add_argument(
    "--memory-size", type=int, default=512, help="side for the remat memory comparison (0: skip)"
  )
  p.add_argument("--num-samples", type=int, default=5000, help="stage-1 loss: pixels per sampled set")
  p.add_argument("--remat-sizes", default="", help="sides whose timed stage-1 rows run with remat")
  p.add_argument(
    "--depthwise",
    default="xla",
    choices=("auto", "shift", "xla"),
    help="depth-wise convolutions: XLA's grouped conv, shifted adds, or auto (shift on CPU)",
  )
  p.add_argument(
    "--cache-dir",
    default="",
    help="persistent compilation cache ('': a fresh temporary one, so compile_s is cold)",
  )
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  p.add_argument(
    "--peak-tflops",
    type=float,
    default=0.0,
    help="the device's peak TFLOP/s for the MFU column (0: a table value for known GPUs)",
  )
  p.add_argument(
    "--out", default="", help="results name (bench/results/NAME.json; default train_PLATFORM_CONFIG_DTYPE)"
  )
  p.add_argument(
    "--stage2-trainable",
    default="",
    help="regex of stage-2 trained params ('': the config's, the head only; '.*': all)",
  )
  args = p.parse_args()
  try:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    remat_sizes = {int(s) for s in args.remat_sizes.split(",") if s}
  except ValueError:
    p.error(
      f"--sizes and --remat-sizes take comma-separated integers, got {args.sizes!r}, {args.remat_sizes!r}"
    )
  distributed.keep_remat_barriers_on_cpu()  # before the backends exist; a no-op off the CPU
  cache = compile_cache.enable(args.cache_dir or tempfile.mkdtemp(prefix="mpc_jax_bench_cache_"))
  mesh = distributed.make_mesh()
  peak = args.peak_tflops or _peak_tflops(args.dtype)
  cols = [
    "stage",
    "input",
    "remat",
    "lower_s",
    "compile_s",
    "median_s",
    "images_per_s",
    "GFLOP_per_step",
    "MFU",
    "args_MiB",
    "temp_MiB",
    "peak_MiB",
    "process_peak_GiB",
  ]
  name = args.out or f"train_{jax.devices()[0].platform}_{args.config}_{args.dtype}"
  if not args.out and jax.devices()[0].platform == "gpu":  # every GPU run is kept, dated
    name += "_" + time.strftime("%Y%m%d_%H%M%S")
  units = {
    "params": "count",
    "input": "batch x height x width (px)",
    "lower_s": "s",
    "compile_s": "s",
    "build_to_first_step_s": "s",
    "median_s": "s",
    "min_s": "s",
    "images_per_s": "images/s",
    "GFLOP_per_step": "GFLOP (1e9 FLOP, XLA cost analysis)",
    "loss": "loss value",
    "args_MiB": "MiB (2**20 bytes)",
    "temp_MiB": "MiB (2**20 bytes)",
    "peak_MiB": "MiB (2**20 bytes)",
    "process_peak_GiB": "GiB (2**30 bytes)",
    "MFU": "fraction of the peak",
    "peak_tflops_per_device": "TFLOP/s",
    "devices_in_mesh": "devices",
  }
  extra = {
    "args": vars(args),
    "devices_in_mesh": int(mesh.devices.size),
    "XLA_FLAGS": __import__("os").environ.get("XLA_FLAGS", ""),
    "compilation_cache": cache,
    "peak_tflops_per_device": peak,
    "memory_note": "XLA compiled memory analysis per device: "
    "peak = arguments + outputs - donated (aliased) + temporaries",
  }
  rows = []

  def add(row):
    if peak and row.get("GFLOP_per_step") and row.get("median_s"):
      row["MFU"] = row["GFLOP_per_step"] / row["median_s"] / (peak * 1e3 * mesh.devices.size)
    rows.append(row)
    print(json.dumps(row), flush=True)
    # written after every row, so a run stopped by a time limit keeps what it measured
    write_result(RESULTS / f"{name}.json", {"machine": machine(), "rows": rows, **extra}, units, quiet=True)

  with jax.set_mesh(mesh):
    for stage in args.stages.split(","):
      for size in sizes:
        print(f"compiling {stage} {args.batch}x{size}x{size} ...", flush=True)
        t_start = time.perf_counter()
        remat = stage == "stage1" and size in remat_sizes
        compiled, state, batch, t_compile, n_params = _compile(args, stage, size, remat, mesh)
        first_step_s = time.perf_counter() - t_start
        run = step_runner(compiled, state, batch)
        t = time_fn(run, repeats=args.repeats)
        flops = _flops(compiled)
        add(
          {
            "stage": stage,
            "model": args.config,
            "params": n_params,
            "input": f"{args.batch}x{size}x{size}",
            "remat": remat,
            **t_compile,
            "build_to_first_step_s": first_step_s + t["first_call_s"],
            "median_s": t["median_s"],
            "min_s": t["min_s"],
            "images_per_s": args.batch / t["median_s"],
            "GFLOP_per_step": flops / 1e9 if flops else None,
            "loss": float(np.asarray(run()["loss/total"].addressable_data(0))),
            **_memory(compiled),
            "process_peak_GiB": _process_peak_gib(),
          }
        )
        del compiled, state, batch, run
    if args.memory_size and "stage1" in args.stages.split(","):
      for remat in (False, True):
        if any(
          r["stage"] == "stage1" and r["remat"] == remat and r["input"].endswith(f"x{args.memory_size}")
          for r in rows
        ):
          continue  # measured (and run) above
        print(
          f"compiling stage1 {args.batch}x{args.memory_size}x{args.memory_size} remat={remat} ...", flush=True
        )
        compiled, _, _, t_compile, n_params = _compile(args, "stage1", args.memory_size, remat, mesh)
        flops = _flops(compiled)
        add(
          {
            "stage": "stage1",
            "model": args.config,
            "params": n_params,
            "input": f"{args.batch}x{args.memory_size}x{args.memory_size}",
            "remat": remat,
            **t_compile,
            "GFLOP_per_step": flops / 1e9 if flops else None,
            **_memory(compiled),
          }
        )
        del compiled
  report(name, rows, cols, units, extra=extra)


if __name__ == "__main__":
  main()
