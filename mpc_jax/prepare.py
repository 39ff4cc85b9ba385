"""`mpc-jax prepare`: pack data sources into ArrayRecord shards (read back with `arrayrecord:DIR`).

    mpc-jax prepare [NAME=]SPEC [SPEC ...] --out DIR [--shard-size 1024] [--workers N]
                    [--missing-mask authentic|bad] [--overwrite] [--no-progress]
    mpc-jax prepare --verify DIR

On a pod or a remote disk, a million small files read at random are the bottleneck; a few large shards
are not. Each source (anything `source_from_spec` reads) gets its own shards, in its order, so
`arrayrecord:DIR:NAME` can weight it in a mixture. Every example is decoded while packing; bad files are
named, listed in `manifest.json` and skipped (exit status 0). A rerun of the same command resumes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import time
from typing import Any, Sequence

from mpc_jax.data.arrayrecord import FORMAT, MANIFEST, WRITER_OPTIONS, encode_record, load_manifest
from mpc_jax.data.io import BadExampleError

PLAN = "prepare_plan.json"
VERSION = 1
_SHARD_RE = re.compile(r".+-\d{5}-of-\d{5}\.array_record(\.done\.json|\.tmp)?$")


def source_name(spec: str) -> tuple[str, str]:
  """`NAME=SPEC` -> (NAME, SPEC); else a name from the folder / file / dataset name."""
  if "=" in spec and not os.path.exists(spec):
    name, rest = spec.split("=", 1)
    if re.fullmatch(r"[\w.\-+]+", name or ""):
      return name, rest
  s = spec.rstrip("/\\")
  if s.startswith("layout:") and s.count(":") >= 2:
    return re.sub(
      r"[^\w.\-+]", "_", os.path.basename(s.split(":", 2)[2].rstrip("/\\")) or s.split(":")[1]
    ), spec
  if s.startswith("arrayrecord:"):
    return re.sub(r"[^\w.\-+]", "_", os.path.basename(s[len("arrayrecord:") :].rstrip("/\\"))) or "data", spec
  if s.startswith(("tfds:", "synthetic:")):
    return re.sub(r"[^\w.\-+]", "_", s), spec
  if ":" in s and not os.path.exists(s):
    s = s.split(":", 1)[0].rstrip("/\\")
  base = os.path.basename(s)
  if base in ("images", "imgs", "Tp") and os.path.dirname(s):
    base = os.path.basename(os.path.dirname(s))
  return re.sub(r"[^\w.\-+]", "_", os.path.splitext(base)[0]) or "data", spec


def _authentic_folder(spec: str):
  """A folder of images without masks (`DIR/*.jpg`, or `DIR/images/` with no `masks/`): all authentic.
  None for any other spec (read by `source_from_spec`)."""
  from mpc_jax.data.sources import IMAGE_EXTENSIONS, PairSource

  path = os.path.expanduser(spec)
  if not os.path.isdir(path) or os.path.isdir(os.path.join(path, "masks")):
    return None
  d = os.path.join(path, "images") if os.path.isdir(os.path.join(path, "images")) else path
  files = sorted(f for f in os.listdir(d) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
  if not files:
    return None
  return PairSource(
    [(os.path.join(d, f), None) for f in files], on_bad_example="skip", check_files="none", name=path
  )


def _source_root(spec: str, source) -> str | None:
  """The folder the stored paths are relative to (None: keep the source's own paths)."""
  pairs = getattr(source, "pairs", None)
  if pairs is None:
    return None
  path = os.path.expanduser(spec)
  if spec.startswith("layout:"):
    cand = os.path.expanduser(spec.split(":", 2)[2])
  elif os.path.isdir(path):
    cand = path
  elif os.path.isfile(path):
    cand = os.path.dirname(os.path.abspath(path))
  else:
    cand = os.path.dirname(os.path.abspath(os.path.expanduser(spec.split(":", 1)[0]).rstrip("/\\")))
  cand = os.path.abspath(cand)
  dirs = {os.path.dirname(os.path.abspath(p)) for p, _ in pairs}
  if all(d == cand or d.startswith(cand + os.sep) for d in dirs):
    return cand
  return os.path.commonpath(sorted(dirs)) if dirs else cand


def _relative(path: str, root: str | None) -> str:
  if root is None:
    return path
  return os.path.relpath(os.path.abspath(path), root)


# ------------------------------------------------------------------------------------------ workers
_WORKER: dict[str, Any] = {}


def _init_worker(sources, counter):
  _WORKER["sources"], _WORKER["counter"] = sources, counter


def _write_shard(task: dict) -> dict:
  """Writes one shard (temporary file, renamed when complete) and its done marker; returns the marker."""
  from array_record.python.array_record_module import ArrayRecordWriter

  from mpc_jax.data.sources import raw_example

  src = _WORKER["sources"][task["source_index"]]
  counter = _WORKER.get("counter")
  final = task["path"]
  tmp = final + ".tmp"
  writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
  n = forged = image_bytes = 0
  bad = []
  try:
    for i in range(task["start"], task["end"]):
      try:
        ex = raw_example(src, i)
      except BadExampleError as e:
        bad.append({"path": e.path, "reason": e.reason})
        print(f"mpc-jax prepare: skipped bad file {e}", file=sys.stderr, flush=True)
      else:
        writer.write(
          encode_record(
            ex["image_bytes"], ex["mask_bytes"], _relative(ex["path"], task["root"]), task["name"]
          )
        )
        n += 1
        forged += bool(len(ex["mask_bytes"]))
        image_bytes += len(ex["image_bytes"])
      if counter is not None:
        with counter.get_lock():
          counter.value += 1
      if "tick" in _WORKER:
        _WORKER["tick"]()
  finally:
    writer.close()
  h = hashlib.sha256()
  with open(tmp, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  os.replace(tmp, final)
  marker = {
    "file": os.path.basename(final),
    "records": n,
    "forged": forged,
    "authentic": n - forged,
    "bytes": os.path.getsize(final),
    "image_bytes": image_bytes,
    "sha256": h.hexdigest(),
    "examples": [task["start"], task["end"]],
    "bad": bad,
  }
  with open(final + ".done.json.tmp", "w", encoding="utf-8") as f:
    json.dump(marker, f)
  os.replace(final + ".done.json.tmp", final + ".done.json")
  return marker


def _read_marker(path: str) -> dict | None:
  """The done marker of shard `path` when the shard is complete (file present, size as recorded)."""
  try:
    with open(path + ".done.json", encoding="utf-8") as f:
      marker = json.load(f)
    return marker if os.path.getsize(path) == marker["bytes"] else None
  except (OSError, ValueError, KeyError):
    return None


# -------------------------------------------------------------------------------------------- prepare
class _Progress:
  def __init__(self, total: int, done: int, enabled: bool):
    self.total, self.start_done, self.enabled = total, done, enabled
    self.t0 = self.last = time.time()

  def update(self, done: int, bad: int, force: bool = False):
    now = time.time()
    if not self.enabled or (not force and now - self.last < 2.0):
      return
    self.last = now
    rate = (done - self.start_done) / max(now - self.t0, 1e-9)
    left = self.total - done
    eta = str(datetime.timedelta(seconds=int(left / rate))) if rate > 0 else "?"
    print(
      f"mpc-jax prepare: {done}/{self.total} examples ({bad} bad), {rate:.1f} records/s, ETA {eta}",
      file=sys.stderr,
      flush=True,
    )


def _plan(named, sources, roots, shard_size: int) -> dict:
  plan = {"format": FORMAT, "version": VERSION, "shard_size": shard_size, "sources": []}
  for (name, spec), src, root in zip(named, sources, roots):
    n = len(src)
    num = max(1, math.ceil(n / shard_size))
    h = hashlib.sha256()
    for p in getattr(src, "pairs", None) or []:
      h.update(f"{p[0]}\t{p[1]}\n".encode())
    plan["sources"].append(
      {
        "name": name,
        "spec": spec,
        "root": root,
        "examples": n,
        "num_shards": num,
        "listing_sha256": h.hexdigest(),
        "shards": [[k * n // num, (k + 1) * n // num] for k in range(num)],
      }
    )
  return plan


def _shard_file(name: str, k: int, num: int) -> str:
  return f"{name}-{k:05d}-of-{num:05d}.array_record"


def _clear(out_dir: str) -> None:
  for f in os.listdir(out_dir):
    if f in (MANIFEST, PLAN) or _SHARD_RE.fullmatch(f):
      os.remove(os.path.join(out_dir, f))


def prepare(
  specs: Sequence[str],
  out_dir,
  *,
  shard_size: int = 1024,
  workers: int | None = None,
  missing_mask: str = "authentic",
  overwrite: bool = False,
  progress: bool = True,
) -> dict:
  """Pack `specs` into ArrayRecord shards under `out_dir`; returns the manifest.

  Records: see `mpc_jax.data.arrayrecord.encode_record`. `manifest.json`: per source its spec, root,
  record / authentic / forged / bad counts, bytes, shards (file, records, bytes, sha256) and bad files
  with their reasons; totals, and `checksum` = sha256 over the shards' `file sha256` lines (`verify`
  re-hashes the shards against it). A shard is written to a temporary file, renamed when complete, then
  marked done (`<shard>.done.json`). With folders, an image without a mask is packed as authentic
  (`missing_mask='authentic'`; counted in the manifest) or reported as bad (`'bad'`).
  `workers`: processes writing shards in parallel (None: up to 8, one per CPU core; <= 1: this process).
  A rerun with the same inputs resumes (done shards are kept); other inputs need `overwrite=True`.
  """
  from mpc_jax.data.sources import source_from_spec, unique_names

  if shard_size <= 0:
    raise ValueError(f"shard_size must be > 0, got {shard_size}")
  if not specs:
    raise ValueError("give at least one data spec to pack")
  out_dir = os.path.abspath(os.fspath(out_dir))
  pairs = [source_name(spec) for spec in specs]
  named = [(name, spec) for name, (_, spec) in zip(unique_names([n for n, _ in pairs]), pairs)]
  t0 = time.time()
  sources, roots, listing_bad = [], [], []
  for _, spec in named:
    src = _authentic_folder(spec) if missing_mask == "authentic" else None
    if src is None:
      src = source_from_spec(spec, on_bad_example="skip", check_files="none", missing_mask=missing_mask)
    sources.append(src)
    roots.append(_source_root(spec, src))
    listing_bad.append([{"path": p, "reason": r} for p, r in getattr(src, "bad_examples", [])])
    for b in listing_bad[-1]:
      print(f"mpc-jax prepare: skipped bad file {b['path']}: {b['reason']}", file=sys.stderr)
  no_mask = [[i for i, m in getattr(s, "pairs", []) if m is None] for s in sources]
  plan = _plan(named, sources, roots, shard_size)

  os.makedirs(out_dir, exist_ok=True)
  plan_path = os.path.join(out_dir, PLAN)
  if os.path.isfile(plan_path):
    with open(plan_path, encoding="utf-8") as f:
      old = json.load(f)
    if old != plan:
      if not overwrite:
        raise ValueError(
          f"{out_dir} holds shards of other inputs (a different spec, file list or shard size): "
          "use another --out or --overwrite"
        )
      _clear(out_dir)
  elif any(f != ".DS_Store" for f in os.listdir(out_dir)):
    if not overwrite:
      raise ValueError(
        f"{out_dir} is not empty and not a `mpc-jax prepare` folder: use an empty folder or --overwrite"
      )
    _clear(out_dir)
  with open(plan_path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(plan, f, indent=1)
  os.replace(plan_path + ".tmp", plan_path)

  tasks, markers = [], {}
  for si, ps in enumerate(plan["sources"]):
    for k, (start, end) in enumerate(ps["shards"]):
      path = os.path.join(out_dir, _shard_file(ps["name"], k, ps["num_shards"]))
      m = _read_marker(path)
      if m is not None and m.get("examples") == [start, end]:
        markers[path] = m
        continue
      for stale in (path + ".tmp", path + ".done.json", path):
        if os.path.exists(stale):
          os.remove(stale)
      tasks.append(
        {"source_index": si, "name": ps["name"], "root": ps["root"], "start": start, "end": end, "path": path}
      )
  total = sum(ps["examples"] for ps in plan["sources"])
  done_before = sum(m["examples"][1] - m["examples"][0] for m in markers.values())
  if markers and progress:
    print(
      f"mpc-jax prepare: resuming: {len(markers)} shard(s) ({done_before} examples) already done, "
      f"{len(tasks)} to write",
      file=sys.stderr,
    )
  bar = _Progress(total, done_before, progress)
  bad_now = sum(len(m["bad"]) for m in markers.values())
  if workers is None:
    workers = min(8, os.cpu_count() or 1)
  workers = max(1, min(int(workers), len(tasks) or 1))
  if workers <= 1:
    counter = multiprocessing.Value("q", 0)
    _init_worker(sources, counter)
    _WORKER["tick"] = lambda: bar.update(done_before + counter.value, bad_now)
    try:
      for task in tasks:
        m = _write_shard(task)
        markers[task["path"]] = m
        bad_now += len(m["bad"])
    finally:
      _WORKER.clear()
  else:
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("q", 0)
    with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=ctx, initializer=_init_worker, initargs=(sources, counter)
    ) as ex:
      futs = {ex.submit(_write_shard, t): t for t in tasks}
      pending = set(futs)
      try:
        while pending:
          finished, pending = concurrent.futures.wait(
            pending, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED
          )
          for fu in finished:
            m = fu.result()
            markers[futs[fu]["path"]] = m
            bad_now += len(m["bad"])
          bar.update(done_before + counter.value, bad_now)
      except BaseException:
        for fu in pending:
          fu.cancel()
        raise
  bar.update(total, bad_now, force=True)
  manifest = _manifest(plan, out_dir, markers, listing_bad, no_mask, missing_mask)
  manifest["seconds"] = round(time.time() - t0, 3)
  with open(os.path.join(out_dir, MANIFEST + ".tmp"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  os.replace(os.path.join(out_dir, MANIFEST + ".tmp"), os.path.join(out_dir, MANIFEST))
  return manifest


def _manifest(plan, out_dir, markers, listing_bad, no_mask, missing_mask) -> dict:
  man = {
    "format": FORMAT,
    "version": VERSION,
    "record_format": "msgpack map: image (bytes: the original file), mask (bytes: binary PNG 0/255, "
    "empty = authentic), path (str: relative to the source's root), source (str)",
    "writer_options": WRITER_OPTIONS,
    "created": datetime.datetime.now().isoformat(timespec="seconds"),
    "shard_size": plan["shard_size"],
    "sources": [],
  }
  lines = []
  for ps, lbad, nm in zip(plan["sources"], listing_bad, no_mask):
    shards = []
    for k in range(ps["num_shards"]):
      m = markers[os.path.join(out_dir, _shard_file(ps["name"], k, ps["num_shards"]))]
      shards.append(m)
      lines.append(f"{m['file']} {m['sha256']}\n")
    bad = lbad + [b for m in shards for b in m["bad"]]
    bad_paths = {b["path"] for b in bad}
    nm = sum(path not in bad_paths for path in nm)  # packed as authentic (bad ones were skipped)
    man["sources"].append(
      {
        "name": ps["name"],
        "spec": ps["spec"],
        "root": ps["root"],
        "records": sum(m["records"] for m in shards),
        "forged": sum(m["forged"] for m in shards),
        "authentic": sum(m["authentic"] for m in shards),
        "bad": len(bad),
        "images_without_mask": nm,
        "missing_mask": missing_mask,
        "bytes": sum(m["bytes"] for m in shards),
        "image_bytes": sum(m["image_bytes"] for m in shards),
        "shards": [{k: m[k] for k in ("file", "records", "bytes", "sha256")} for m in shards],
        "bad_files": bad,
      }
    )
  for key in ("records", "forged", "authentic", "bad", "bytes", "image_bytes"):
    man[key] = sum(s[key] for s in man["sources"])
  man["num_shards"] = len(lines)
  man["checksum"] = "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()
  return man


def verify(directory) -> list[str]:
  """Re-hash every shard of a prepared folder; returns the problems found (empty: all match)."""
  from array_record.python.array_record_module import ArrayRecordReader

  man = load_manifest(directory)
  problems, lines = [], []
  for s in man["sources"]:
    for sh in s["shards"]:
      p = os.path.join(os.fspath(directory), sh["file"])
      lines.append(f"{sh['file']} {sh['sha256']}\n")
      if not os.path.isfile(p):
        problems.append(f"{p}: missing")
        continue
      h = hashlib.sha256()
      with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      if h.hexdigest() != sh["sha256"]:
        problems.append(f"{p}: sha256 {h.hexdigest()} differs from the manifest's {sh['sha256']}")
        continue
      r = ArrayRecordReader(p)
      if r.num_records() != sh["records"]:
        problems.append(f"{p}: {r.num_records()} records, the manifest says {sh['records']}")
      r.close()
  if "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest() != man.get("checksum"):
    problems.append(f"{directory}: manifest checksum does not match its shard list")
  return problems


def summary(man: dict, out_dir: str, max_bad: int = 50) -> str:
  lines = [
    f"packed {man['records']} records ({man['forged']} forged, {man['authentic']} authentic) from "
    f"{len(man['sources'])} source(s) into {man['num_shards']} shard(s), {man['bytes'] / 2**20:.1f} MiB, "
    f"in {man.get('seconds', 0):.1f} s -> {out_dir}"
  ]
  for s in man["sources"]:
    extra = (
      f", {s['images_without_mask']} image(s) without a mask packed as authentic"
      if s["images_without_mask"] and s["missing_mask"] == "authentic"
      else ""
    )
    lines.append(
      f"  {s['name']}: {s['records']} records, {s['bad']} bad file(s) skipped{extra}"
      f"  (spec {s['spec']}; read with arrayrecord:{out_dir}:{s['name']})"
    )
  bad = [(s["name"], b) for s in man["sources"] for b in s["bad_files"]]
  if bad:
    lines.append(f"{len(bad)} bad file(s) skipped (all listed in {MANIFEST}, 'bad_files'):")
    lines += [f"  {name}: {b['path']}: {b['reason']}" for name, b in bad[:max_bad]]
    if len(bad) > max_bad:
      lines.append(f"  ... and {len(bad) - max_bad} more")
  else:
    lines.append("0 bad files")
  lines.append(f"checksum {man['checksum']}; read all with arrayrecord:{out_dir}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def cli_main(argv: Sequence[str] | None = None) -> int:
  from mpc_jax.main import UsageError, add_common_args

  p = argparse.ArgumentParser(
    prog="mpc-jax prepare",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="\n\n".join(__doc__.split("\n\n")[1:]),
  )
  p.add_argument("specs", nargs="*", metavar="SPEC", help="data sources to pack ([NAME=]SPEC)")
  p.add_argument(
    "--data", nargs="+", action="extend", default=[], metavar="SPEC", help="more sources (as SPEC)"
  )
  p.add_argument("--out", "--output", "-o", dest="out", help="output folder (created; a rerun resumes)")
  p.add_argument("--shard-size", type=int, default=1024, help="examples per shard (default 1024)")
  p.add_argument(
    "--workers",
    type=int,
    default=None,
    help="processes writing shards (default: one per core, up to 8; 1 = this process)",
  )
  p.add_argument(
    "--missing-mask",
    choices=("authentic", "bad"),
    default="authentic",
    help="folders: an image without a mask is authentic (default) or a bad example",
  )
  p.add_argument("--overwrite", action="store_true", help="replace the shards of other inputs in --out")
  p.add_argument("--verify", metavar="DIR", help="check the shards of a prepared folder against its manifest")
  p.add_argument("--no-progress", action="store_true", help="no progress lines")
  add_common_args(p)
  args = p.parse_args(argv)
  if args.verify:
    problems = verify(args.verify)
    for line in problems:
      print(f"mpc-jax prepare: {line}", file=sys.stderr)
    man = load_manifest(args.verify)
    print(
      f"{args.verify}: {man['records']} records in {man['num_shards']} shard(s): "
      + ("OK" if not problems else f"{len(problems)} problem(s)")
    )
    return 1 if problems else 0
  specs = list(args.specs) + list(args.data)
  if not specs:
    raise UsageError("give at least one data SPEC to pack (or --verify DIR)")
  if not args.out:
    raise UsageError("--out DIR is required")
  if args.shard_size <= 0:
    raise UsageError(f"--shard-size must be > 0, got {args.shard_size}")
  if args.workers is not None and args.workers < 0:
    raise UsageError(f"--workers must be >= 0, got {args.workers}")
  man = prepare(
    specs,
    args.out,
    shard_size=args.shard_size,
    workers=args.workers,
    missing_mask=args.missing_mask,
    overwrite=args.overwrite,
    progress=not args.no_progress,
  )
  print(summary(man, os.path.abspath(args.out)))
  return 0


if __name__ == "__main__":
  from mpc_jax.main import run as _run

  sys.exit(_run(["prepare"] + sys.argv[1:]))
