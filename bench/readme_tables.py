"""The README's benchmark table and demo figures, generated from bench/results/*.json.

    python bench/readme_tables.py           # rewrites the generated parts of README.md
    python bench/readme_tables.py --check   # exit 1 (and a diff) when README.md differs from them

Each generated part sits between `<!-- begin generated: NAME ... -->` and `<!-- end generated: NAME -->`
in README.md; everything else in the README is left alone. Every figure is formatted from a results
file (memory in GiB, 2**30 bytes), and every row names its file and when it was measured, so
`tests/test_readme_figures.py` fails when a figure is edited by hand or a results file changes
without the README being regenerated.
"""

from __future__ import annotations

import argparse
import difflib
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"


def load(name: str) -> dict:
  return json.loads((RESULTS / name).read_text())


def gib(nbytes: float) -> str:
  return f"{nbytes / 2**30:#.3g} GiB"


def gib_from_mib(mib: float) -> str:
  return gib(mib * 2**20)


def minutes(s: float) -> str:
  s = round(s)
  return f"{s // 60} min {s % 60:02d} s"


def row(rows: list[dict], **match) -> dict:
  """The one row whose fields equal `match`."""
  found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
  if len(found) != 1:
    raise KeyError(f"{len(found)} rows match {match}")
  return found[0]


def measured(name: str) -> str:
  """`file, date commit` of a results file, or `file, date unknown` for one without provenance."""
  p = load(name)["provenance"]
  when = f"{p['date'][:10]}, {p['commit']}" if "date" in p else "date unknown (see its provenance note)"
  return f"`{name}`, {when}"


def command(name: str, default: str = "") -> str:
  return load(name)["provenance"].get("command", default)


# ----------------------------------------------------------------------------------------- figures
def fig_forward() -> str:
  r = row(load("forward.json")["rows"], dtype="float32")
  return f"{r['median_s']:.2f} s ({r['images_per_s']:.2f} images/s), compile + first call {r['compile+first_s']:.0f} s"


def fig_predict() -> str:
  d = load("predict.json")
  r = row(d["runs"], batch=1)
  e2e = d["end_to_end_640x480_resize512"]
  text = (
    f"{r['images_per_s_median']:.2f} images/s (median {r['median_s']:.2f} s); a 640x480 image end to end "
    f"(resize, predict, upsample) {e2e['best_s']:.2f} s"
  )
  if "folder" in d:
    f = d["folder"]
    text += (
      f"; a folder of {f['images']} mixed-size JPEG/PNG files through `predict_paths` (decode, predict, write "
      f"the maps) {f['images_per_s']:.3f} images/s, {f['ratio_to_forward']:.2f}x the forward's rate"
    )
  return text


def fig_cold_start() -> str:
  rows = {r["impl"]: r for r in load("cold_start_cpu.json")["rows"]}

  def cell(prefix, cache):
    r = [v for k, v in rows.items() if k.startswith(prefix) and cache in k][0]
    return f"{r['median_s']:.1f} s ({r['speed_vs_reference']:.2f}x)"

  ref = [r for k, r in rows.items() if k.startswith("reference")][0]
  parts = [f"reference {ref['median_s']:.1f} s"]
  for prefix, name in (
    ("mpc-jax predict,", "`mpc-jax predict`"),
    ("mpc-jax predict --programs whole", "`--programs whole`"),
  ):
    if any(k.startswith(prefix) for k in rows):
      parts.append(
        f"{name} {cell(prefix, 'empty')} with an empty compilation cache, {cell(prefix, 'earlier run')} with the cache of an earlier run"
      )
  return "; ".join(parts) + " (speed vs the reference in brackets)"


def fig_profile() -> str:
  d = load("profile_cpu_hrt_base.json")
  parts = []
  for program in dict.fromkeys(r["program"] for r in d["rows"]):
    rows = sorted((r for r in d["rows"] if r["program"] == program), key=lambda r: -r["share"])
    top = ", ".join(f"{r['family']} {100 * r['share']:.0f}%" for r in rows[:4])
    parts.append(f"{program}, {rows[0]['wall_s']:.2f} s per call under the profiler: {top}")
  return "; ".join(parts) + f" (depth-wise form: {d['depthwise']})"


def fig_loss() -> str:
  rows = load("loss.json")["rows"]

  def cell(k, mode):
    r = row(rows, num_samples=k, mode=mode)
    if "skipped" in r or "error" in r:
      return f"{mode} not run (XLA estimate {gib(r['xla_peak_bytes'])})"
    return f"{mode} {r['run_s']:.1f} s / {gib(r['xla_peak_bytes'])}"

  return (
    f"5000 samples: {cell(5000, 'plain')} vs {cell(5000, 'chunked')}; 10000 samples: "
    f"{cell(10000, 'chunked')}, {cell(10000, 'plain')}; memory: XLA's buffer estimate"
  )


def fig_loss_paths() -> str:
  rows = load("loss_paths.json")["rows"]
  sampled, whole = row(rows, path="sampled"), row(rows, path="whole image")
  return (
    f"whole-image path {whole['median_s']:.2f} s ({gib(whole['xla_temp_bytes'])} of XLA temporaries) against "
    f"the sampled path's {sampled['median_s']:.2f} s ({gib(sampled['xla_temp_bytes'])}): "
    f"{whole['speed_vs_sampled']:.1f}x, same loss ({whole['loss']:.5f} and {sampled['loss']:.5f})"
  )


def fig_data() -> str:
  d = load("data.json")
  rows = d["rows"]
  cell = lambda reader, work: row(rows, reader=reader, work=work)["examples_per_s"]  # noqa: E731
  files, ar = "files (PNG per image)", "arrayrecord"
  one = "read + decode + augment + batch (per core)"
  cores = row(rows, reader=ar, work=one)
  rates = d.get("step_rates_images_per_s", {})
  rate = "; ".join(
    f"{k.replace('stage', 'stage ')}: {v['images_per_s']:.3g} images/s" for k, v in rates.items()
  )
  return (
    f"ArrayRecord vs one PNG per image: read + decode {cell(ar, 'read + decode'):.1f} vs "
    f"{cell(files, 'read + decode'):.1f} ex/s; with the augmentations {cell(ar, one):.1f} vs "
    f"{cell(files, one):.1f} ex/s per core; cores that keep up with the measured step rates ({rate}): "
    f"stage 1 {cores['cores_stage1']}, stage 2 {cores['cores_stage2']}"
  )


def _beside_reference(name: str, forms: dict, digits: int) -> str:
  """`reference T s; mpc-jax T s WORDS(ratio; lower + compile) ...` for each depth-wise form in `forms`
  that the results hold (a run may time only some: `--depthwise auto`)."""
  rows = load(name)["rows"]
  refs = [r for r in rows if r["impl"].startswith("reference")]
  ref = refs[0]
  same = [r for r in refs if "malloc as mpc-jax sets it" in r["impl"]]
  parts = []
  for form, words in forms.items():
    # the label may go on with how the program was compiled (", compiled by a child process")
    ours = [r for r in rows if re.fullmatch(f"mpc-jax, depthwise={form}(, .*)?", r["impl"])]
    if not ours:
      continue
    (r,) = ours
    beside = f", {r['speed_vs_reference_same_malloc']:.2f}x with its malloc set as ours" if same else ""
    parts.append(
      f"{r['median_s']:.{digits}f} s {words}({r['speed_vs_reference']:.2f}x the reference's speed{beside}; "
      f"lower + compile {r['lower_s'] + r['compile_s']:.0f} s)"
    )
  also = f" ({same[0]['median_s']:.{digits}f} s with glibc's malloc set as mpc-jax sets it)" if same else ""
  return f"reference {ref['median_s']:.{digits}f} s{also}; mpc-jax " + ", ".join(parts)


def fig_reference() -> str:
  return _beside_reference(
    "reference_cpu.json", {"auto": "", "xla": "with XLA's grouped depth-wise convolution "}, 2
  )


def fig_reference_stage1() -> str:
  forms = {
    "auto": "with shifted-add depth-wise convolutions (the default on the CPU) ",
    "xla": "with XLA's grouped depth-wise convolution ",
  }
  return _beside_reference("reference_stage1_cpu.json", forms, 1)


def fig_reference_stage1_cached() -> str:
  return _beside_reference("reference_stage1_cached_cpu.json", {"auto": ""}, 1)


def fig_reference_gpu() -> str:
  return _beside_reference("reference_gpu_h100.json", {"auto": ""}, 3)


def fig_host_memory() -> str:
  rows = load("host_memory_cpu.json")["rows"]
  parts = []
  for program in dict.fromkeys(r["program"] for r in rows):
    base, kept = (r for r in rows if r["program"] == program)
    cell = lambda r: (
      f"{r['median_s']:.2f} s ({r['faults_per_call'] / 1e6:.2f} M page faults and "
      f"{r['kernel_s_per_call']:.1f} s of kernel time per call, peak RSS {r['peak_rss_GiB']:.1f} GiB)"
    )
    parts.append(
      f"{program} {base['input']}: glibc's defaults {cell(base)}, freed memory kept {cell(kept)}: "
      f"{kept['speed_vs_defaults']:.2f}x"
    )
  return "; ".join(parts)


def fig_depthwise() -> str:
  shift = [r for r in load("depthwise_cpu.json")["rows"] if r["impl"] == "shift"]
  fwd = [r["fwd_speedup"] for r in shift]
  bwd = [r["bwd_speedup"] for r in shift]
  return (
    f"shifted multiply-adds (`layers.depthwise_conv`; `config.model.depthwise`, default 'auto': used on "
    f"the CPU) vs XLA's grouped convolution: {min(fwd):.1f}-{max(fwd):.1f}x faster forward, "
    f"{min(bwd):.1f}-{max(bwd):.1f}x faster backward, with a hand-written gradient that keeps no more "
    f"for the backward pass (see `mpc_jax/models/layers.py`)"
  )


def fig_compile() -> str:
  rows = load("compile_cpu.json")["rows"]
  tiny = {r["options"]: r for r in rows if r["program"] == "tiny_stage1_step"}
  fwd = {r["options"]: r for r in rows if r["program"] == "hrt_base_forward"}
  d, t = tiny["default"], tiny["tests"]
  return (
    f"tests' tiny stage-1 step (8 devices): lower {d['lower_s']:.1f} s, compile {d['compile_s']:.0f} s with "
    f"XLA's defaults, {t['compile_s']:.0f} s with the tests' options ({d['compile_s'] / t['compile_s']:.1f}x); "
    f"HRT-base forward 1x512: compile {fwd['default']['compile_s']:.0f} s and {fwd['default']['median_s']:.2f} s "
    f"per call with the defaults, {fwd['tests']['compile_s']:.0f} s and {fwd['tests']['median_s']:.2f} s with the "
    f"tests' options (so only the tests use them)"
  )


def fig_train_tiny() -> str:
  rows = load("train_cpu_hrt_tiny_float32.json")["rows"]
  s1 = row(rows, stage="stage1", remat=False)
  s2 = row(rows, stage="stage2", remat=False)
  s1r = row(rows, stage="stage1", remat=True)
  return (
    f"stage 1 {s1['median_s']:.3f} s (compile {s1['compile_s']:.0f} s), stage 2 {s2['median_s']:.3f} s "
    f"(compile {s2['compile_s']:.0f} s); stage-1 XLA peak {gib_from_mib(s1['peak_MiB'])}, "
    f"{gib_from_mib(s1r['peak_MiB'])} with remat"
  )


def fig_train_base() -> str:
  rows = load("train_cpu_hrt_base_float32.json")["rows"]
  a = row(rows, stage="stage2", input="2x256x256")
  b = row(rows, stage="stage2", input="2x512x512")
  c = row(rows, stage="stage1", input="2x256x256", remat=False)
  d = row(rows, stage="stage1", input="2x512x512", remat=True)

  def timed(r):
    return f"{r['median_s']:.3g} s ({r['images_per_s']:.2g} images/s, XLA peak {gib_from_mib(r['peak_MiB'])})"

  return (
    f"stage 2: {timed(a)} at 256 px, {timed(b)} at 512 px; stage 1: {timed(c)} at 256 px, {timed(d)} "
    f"at 512 px with remat; compile {a['compile_s']:.0f}-{b['compile_s']:.0f} s (stage 2), "
    f"{c['compile_s']:.0f} s (stage 1), {d['compile_s']:.0f} s (stage 1 with remat)"
  )


def fig_train_base_memory() -> str:
  rows = load("train_cpu_hrt_base_float32.json")["rows"]
  plain = row(rows, stage="stage1", input="2x512x512", remat=False)
  remat = row(rows, stage="stage1", input="2x512x512", remat=True)
  return (
    f"{gib_from_mib(plain['peak_MiB'])} without remat (compiled only: it does not fit this machine), "
    f"{gib_from_mib(remat['peak_MiB'])} with remat ({plain['peak_MiB'] / remat['peak_MiB']:.1f}x less) "
    f"for {100 * (remat['GFLOP_per_step'] / plain['GFLOP_per_step'] - 1):.0f}% more FLOPs "
    f"({remat['GFLOP_per_step']:.0f} vs {plain['GFLOP_per_step']:.0f} GFLOP as XLA counts them)"
  )


def fig_train_gpu_autotuned() -> str:
  d = load("train_gpu_h100_20261127.json")
  a = row(d["rows"], stage="stage2", input="2x256x256")
  s1 = d["stage1_2x256"]
  return (
    f"stage 2 at 256 px: {a['median_s']:.3f} s ({a['images_per_s']:.0f} images/s, XLA peak "
    f"{gib_from_mib(a['peak_MiB'])}; lower {a['lower_s']:.1f} s, compile {a['compile_s']:.0f} s); stage 1 at "
    f"256 px: not compiled after {s1['stopped_after_compile_s']} s; with Triton GEMMs off XLA's log gives "
    f"{s1['xla_compile_s_triton_gemm_off']} s of compile ({s1['run_hlo_passes_s_triton_gemm_off']} s of HLO "
    f"passes with autotuning, {s1['run_backend_s_triton_gemm_off']} s of code generation); the reference's "
    f"stage-1 step on that GPU: {d['reference_stage1_2x256_median_s']:.2f} s"
  )


def fig_train_gpu() -> str:
  rows = load("train_gpu_h100.json")["rows"]
  a = row(rows, stage="stage2", input="2x256x256")
  b = row(rows, stage="stage2", input="2x512x512")
  return (
    f"stage 2: {a['median_s']:.3f} s at 256 px ({a['images_per_s']:.1f} images/s), {b['median_s']:.3f} s "
    f"at 512 px ({b['images_per_s']:.1f} images/s), MFU {100 * max(a['MFU'], b['MFU']):.2f}%: far below "
    f"the GPU, not yet profiled; stage 1 did not finish compiling in 170-330 s"
  )


# (what, results file, command when the file records none, figure)
ROWS = [
  ("HRT-base forward, 1x512x512, float32, jit, median of 5", "forward.json", "", fig_forward),
  (
    "MPC forward beside the PyTorch reference, 1x512x512, float32, median of 3, same machine and run",
    "reference_cpu.json",
    "",
    fig_reference,
  ),
  (
    "stage-1 training step beside the PyTorch reference, HRT-base, 2x256x256, float32, median of 3, same "
    "machine; mpc-jax's step compiled by a child process into an empty compilation cache, as `mpc-jax train` "
    "does",
    "reference_stage1_cpu.json",
    "",
    fig_reference_stage1,
  ),
  (
    "the same step in a restarted run: mpc-jax's program read from the compilation cache the run above filled",
    "reference_stage1_cached_cpu.json",
    "",
    fig_reference_stage1_cached,
  ),
  (
    "freed memory kept (`mpc_jax/host_memory.py`) or given back by glibc, HRT-base, each in a fresh process",
    "host_memory_cpu.json",
    "",
    fig_host_memory,
  ),
  ("prediction, HRT-base at 512x512, batch 1", "predict.json", "", fig_predict),
  (
    "cold start: one 640x480 image predicted by a fresh process, HRT-base weights from a file, same machine",
    "cold_start_cpu.json",
    "",
    fig_cold_start,
  ),
  (
    "where the time goes on the CPU, HRT-base, kernel time per op family (top four)",
    "profile_cpu_hrt_base.json",
    "",
    fig_profile,
  ),
  ("stage-1 loss fwd+bwd, 4 images, 128x128 maps, 256 ch", "loss.json", "", fig_loss),
  (
    "stage-1 loss fwd+bwd at a 256 px step's shapes (2 images, 64x64 maps, 256 ch): its two paths",
    "loss_paths.json",
    "",
    fig_loss_paths,
  ),
  ("training input pipeline, 512 px, full augmentation", "data.json", "", fig_data),
  (
    "depth-wise 3x3 convolution, HRT-base's shapes at 512 px, batch 2",
    "depthwise_cpu.json",
    "",
    fig_depthwise,
  ),
  (
    "compile time under XLA:CPU options, each in a fresh process and cache",
    "compile_cpu.json",
    "",
    fig_compile,
  ),
  (
    "training step, hrt_tiny, batch 2, 64 px (code-path check)",
    "train_cpu_hrt_tiny_float32.json",
    "",
    fig_train_tiny,
  ),
  (
    "training step, HRT-base, batch 2, float32, 256 and 512 px",
    "train_cpu_hrt_base_float32.json",
    "",
    fig_train_base,
  ),
  (
    "stage-1 peak memory per device, HRT-base, batch 2, 512 px (XLA's buffers)",
    "train_cpu_hrt_base_float32.json",
    "",
    fig_train_base_memory,
  ),
  (
    "MPC forward beside the PyTorch reference (as published: CUDA, float32, no cudnn.benchmark), 1x512x512, "
    "median of 10, one H100",
    "reference_gpu_h100.json",
    "",
    fig_reference_gpu,
  ),
  (
    "training step, HRT-base, batch 2, one H100, float32, XLA autotuning on",
    "train_gpu_h100_20261127.json",
    "",
    fig_train_gpu_autotuned,
  ),
  (
    "training step, HRT-base, batch 2, one H100, float32 (XLA autotuning off)",
    "train_gpu_h100.json",
    "XLA_FLAGS=--xla_gpu_autotune_level=0 python bench/bench_train.py --stages stage2,stage1 --sizes 256 "
    "(and --sizes 512)",
    fig_train_gpu,
  ),
]


def bench_table() -> str:
  lines = ["| what | command | figure | results file, measured |", "| --- | --- | --- | --- |"]
  for what, name, default_cmd, fig in ROWS:
    lines.append(f"| {what} | `{command(name, default_cmd)}` | {fig()} | {measured(name)} |")
  return "\n".join(lines)


def demo_sentence() -> str:
  d = load("demo_cpu.json")
  p = d["provenance"]
  return (
    f"In a run on the 2-core development machine while other jobs shared it (`{p['command']}`, "
    f"{p['date'][:10]}, commit {p['commit']}; its result file is `bench/results/demo_cpu.json`): "
    f"held-out pixel F1 {d['f1']:.3f} (IoU {d['iou']:.3f}); training and the final evaluation took "
    f"{minutes(d['wall_s'])}."
  )


PARTS = {"bench-table": bench_table, "demo-result": demo_sentence}
_BLOCK = re.compile(
  r"(<!-- begin generated: (?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)(\n<!-- end generated: (?P=name) -->)",
  re.S,
)


def render(text: str) -> str:
  """`text` with every generated part replaced by its current content."""
  seen = set()

  def sub(m):
    name = m.group("name")
    if name not in PARTS:
      raise KeyError(f"README.md: unknown generated part {name!r} (known: {sorted(PARTS)})")
    seen.add(name)
    return m.group(1) + PARTS[name]() + m.group(4)

  out = _BLOCK.sub(sub, text)
  missing = set(PARTS) - seen
  if missing:
    raise KeyError(f"README.md: no generated part {sorted(missing)} (markers missing?)")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is out of date")
  args = p.parse_args(argv)
  text = README.read_text()
  new = render(text)
  if args.check:
    if new != text:
      sys.stdout.writelines(
        difflib.unified_diff(
          text.splitlines(True), new.splitlines(True), "README.md", "README.md (regenerated)"
        )
      )
      return 1
    return 0
  if new != text:
    README.write_text(new)
    print(f"rewrote {README}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
