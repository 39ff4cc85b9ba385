"""Where the time goes: the MPC forward and the stage-1 training step, per op family.

  python bench/profile_cpu.py [--config hrt_base] [--size 512] [--step-size 256] [--batch 2]
                              [--what forward,stage1] [--depthwise auto] [--repeats 2] [--out NAME]

For profiling only, each layer family's calls (the loss and the optimizer update too) run under a
`jax.named_scope` (`install_scopes`); the program runs under `jax.profiler`, every XLA kernel executed is
attributed to a family (`kernel_family`), and kernel times are summed per family over `--repeats` calls
and divided by the calls (`profile`). Writes bench/results/NAME.json (default `profile_PLATFORM_CONFIG`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import compile_forward, report, step_runner  # noqa: E402

from mpc_jax import compile_cache, distributed, steps, train, train_state  # noqa: E402
from mpc_jax.models import hrformer, layers, mpc  # noqa: E402
from mpc_jax.train_config import base_config  # noqa: E402

# scope name -> family; the innermost scope found in an instruction's op_name wins
FAMILY_OF_SCOPE = {
  "conv": "conv",
  "depthwise_conv": "depthwise conv",
  "linear": "linear (q/k/v/out)",
  "window_attention": "window attention (QK, softmax, AV, bias)",
  "window_partition": "window attention (QK, softmax, AV, bias)",
  "layer_norm": "LayerNorm",
  "batch_norm": "BatchNorm",
  "activation": "activation (GELU/ReLU)",
  "resize": "resize / fuse",
  "drop_path": "other",
  "loss": "stage-1 loss",
  "optimizer": "optimizer (AdamW)",
}


def _scoped(cls, method, scope):
  """Wraps `cls.method` so that its traced ops carry the named scope `scope(self)`."""
  original = getattr(cls, method)

  @functools.wraps(original)
  def wrapper(self, *args, **kwargs):
    with jax.named_scope(scope(self) if callable(scope) else scope):
      return original(self, *args, **kwargs)

  setattr(cls, method, wrapper)


def _scoped_function(module, name, scope):
  original = getattr(module, name)

  @functools.wraps(original)
  def wrapper(*args, **kwargs):
    with jax.named_scope(scope):
      return original(*args, **kwargs)

  setattr(module, name, wrapper)


def install_scopes():
  """Named scopes on every layer family (this process only; values are unchanged)."""
  _scoped(layers.Conv, "__call__", lambda m: "depthwise_conv" if m.groups > 1 else "conv")
  _scoped(layers.Linear, "__call__", "linear")
  _scoped(layers.BatchNorm, "__call__", "batch_norm")
  _scoped(layers.LayerNorm, "__call__", "layer_norm")
  _scoped(layers.Act, "__call__", "activation")
  _scoped(layers.DropPath, "__call__", "drop_path")
  _scoped(layers.UpsampleNearest, "__call__", "resize")
  _scoped(hrformer.WindowAttention, "__call__", "window_attention")
  _scoped(hrformer.WindowAttentionBlock, "__call__", "window_partition")
  _scoped(hrformer.MlpDWBN, "__call__", "activation")  # what is left in it after its convs and norms
  for module in (hrformer, mpc):
    _scoped_function(module, "resize_bilinear_align_corners", "resize")
  for name in ("multiview_pixel_contrast", "multiview_pixel_contrast_sharded"):
    _scoped_function(steps, name, "loss")
  _scoped_function(steps, "_apply", "optimizer")


# ------------------------------------------------------------------------------------ HLO parsing
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\s([\w\-]+)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_GROUPS = re.compile(r"feature_group_count=(\d+)")


def parse_hlo(text: str) -> tuple[dict, dict]:
  """`(instructions, computations)`: name -> (opcode, op_name, groups, called computations), and
  computation name -> its instruction names."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      computations[current] = []
      continue
    m = _INSTR.match(line)
    if not m or current is None:
      continue
    name, opcode = m.group(1), m.group(2)
    op_name = _OP_NAME.search(line)
    groups = _GROUPS.search(line)
    instructions[name] = (
      opcode,
      op_name.group(1) if op_name else "",
      int(groups.group(1)) if groups else 1,
      _CALLS.findall(line),
    )
    computations[current].append(name)
  return instructions, computations


def _scope_family(op_name: str) -> str:
  parts = re.split(r"[/()]", op_name)
  for part in reversed(parts):
    if part in FAMILY_OF_SCOPE:
      return FAMILY_OF_SCOPE[part]
  return "other"


def kernel_family(name: str, instructions: dict, computations: dict) -> str:
  """The family of executed kernel `name` (an HLO instruction, usually a fusion).

  A kernel (a thunk of the CPU runtime, or a GPU kernel's HLO op) is attributed by the HLO instructions
  it holds: one with a convolution counts as 'conv' ('depthwise conv' when its feature groups are > 1),
  any other as the family of the innermost scope of most of its instructions.
  """
  seen, stack, ops = set(), [name], []
  while stack:
    n = stack.pop()
    if n in seen or n not in instructions:
      continue
    seen.add(n)
    opcode, op_name, groups, called = instructions[n]
    ops.append((opcode, op_name, groups))
    for comp in called:
      stack.extend(computations.get(comp, []))
  convs = [o for o in ops if o[0] == "convolution"]
  if convs:
    return "depthwise conv" if any(g > 1 for _, _, g in convs) else _conv_family(convs)
  votes = collections.Counter(
    _scope_family(o[1]) for o in ops if o[1] and o[0] not in ("parameter", "constant")
  )
  return votes.most_common(1)[0][0] if votes else "other"


def _conv_family(convs) -> str:
  # a dense convolution inside a depth-wise scope is XLA's form of the depth-wise kernel gradient
  fams = {_scope_family(o[1]) for o in convs}
  return "depthwise conv" if fams == {"depthwise conv"} else "conv"


def profile(fn, args, repeats: int, hlo_text: str) -> tuple[dict, float]:
  """Runs `fn(*args)` `repeats` times under the profiler; returns (ms per call by family, wall s).

  Kernels that run at the same time on different threads each count, so the sum can exceed the wall
  time (both are printed).
  """
  instructions, computations = parse_hlo(hlo_text)
  with tempfile.TemporaryDirectory(prefix="mpc_jax_profile_") as tmp:
    jax.block_until_ready(fn(*args))
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    t0 = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(fn(*args))
    wall = (time.perf_counter() - t0) / repeats
    jax.profiler.stop_trace()
    trace = next(pathlib.Path(tmp).rglob("*.trace.json.gz"))
    events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals, cache = collections.Counter(), {}
  for e in events:
    hlo_op = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") != "X" or not hlo_op:
      continue
    if hlo_op not in cache:
      cache[hlo_op] = kernel_family(hlo_op, instructions, computations)
    totals[cache[hlo_op]] += e.get("dur", 0.0) / 1e3 / repeats  # us -> ms per call
  return dict(totals), wall


def _forward(args, size):
  f = compile_forward(args.config, size, args.depthwise)
  return f["compiled"], f["args"], f["lower_s"], f["compile_s"]


def _stage1(args, size, mesh):
  c = base_config()
  c.model.hrformer, c.model.depthwise = args.config, args.depthwise
  c.data.input_size = size
  c.stage1.batch_size = args.batch
  model = train.build_model(c)
  state, parts = train_state.create_state(model, c.stage1, mesh)
  step = steps.make_step("stage1", parts, c, mesh)
  rng = np.random.default_rng(0)
  mask = np.zeros((args.batch, size // 4, size // 4), np.float32)
  mask[:, : size // 8] = 1.0
  batch = distributed.global_batch(
    {"image": rng.random((args.batch, size, size, 3), np.float32), "mask": mask}, mesh
  )
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  t1 = time.perf_counter()
  compiled = compile_cache.compile_in_child(lowered)[0]  # as `mpc-jax train` compiles its steps
  t2 = time.perf_counter()
  return compiled, step_runner(compiled, state, batch), (), t1 - t0, t2 - t1


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="hrt_base", help="HRFormer preset")
  p.add_argument("--size", type=int, default=512, help="forward input side (batch 1)")
  p.add_argument("--step-size", type=int, default=256, help="stage-1 step input side")
  p.add_argument("--batch", type=int, default=2, help="stage-1 step global batch")
  p.add_argument("--what", default="forward,stage1", help="forward and/or stage1, comma-separated")
  p.add_argument("--depthwise", default="auto", choices=layers.DEPTHWISE_CHOICES)
  p.add_argument("--repeats", type=int, default=2, help="profiled calls (after one warm-up call)")
  p.add_argument("--out", default="", help="results name (default profile_PLATFORM_CONFIG)")
  args = p.parse_args(argv)
  install_scopes()
  rows = []
  compile_cache.enable(tempfile.mkdtemp(prefix="mpc_jax_profile_cache_"))  # cold compiles, as before
  mesh = distributed.make_mesh(1)
  with jax.set_mesh(mesh):
    for what in args.what.split(","):
      if what == "forward":
        compiled, fn_args, lower_s, compile_s = _forward(args, args.size)
        fn, label = compiled, f"forward 1x{args.size} (eval)"
      elif what == "stage1":
        compiled, fn, fn_args, lower_s, compile_s = _stage1(args, args.step_size, mesh)
        label = f"stage-1 step {args.batch}x{args.step_size}"
      else:
        p.error(f"--what takes forward and/or stage1, got {what!r}")
      fams, wall = profile(fn, fn_args, args.repeats, compiled.as_text())
      total = sum(fams.values())
      print(
        f"\n{label}: wall {wall:.3f} s per call, kernel time {total / 1e3:.3f} s, "
        f"lower {lower_s:.1f} s, compile {compile_s:.1f} s",
        flush=True,
      )
      for fam, ms in sorted(fams.items(), key=lambda kv: -kv[1]):
        rows.append(
          dict(
            program=label,
            family=fam,
            ms_per_call=ms,
            share=ms / total if total else 0.0,
            wall_s=wall,
            lower_s=lower_s,
            compile_s=compile_s,
          )
        )
  report(
    args.out or f"profile_{jax.devices()[0].platform}_{args.config}",
    rows,
    ["program", "family", "ms_per_call", "share"],
    {
      "ms_per_call": "ms of kernel time per call",
      "share": "fraction of the kernel time",
      "wall_s": "s",
      "lower_s": "s",
      "compile_s": "s",
    },
    extra={"depthwise": args.depthwise},
  )


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
