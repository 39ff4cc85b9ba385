"""JAX's persistent compilation cache, on by default for every mpc-jax command and benchmark.

A compiled program (the training step, the forward at one input shape) is written to the cache
directory and reused by every later process that builds the same program, so a restart or a
second run skips XLA's compile (and, on GPUs, its autotuning). The directory, in order:
an explicit argument (`config.compilation_cache_dir`), `$MPC_JAX_COMPILATION_CACHE`, a directory
JAX was already given, else `~/.cache/mpc_jax/jax` (under `$XDG_CACHE_HOME` where set). The
value `off` turns the cache off.

`stored_program` goes one step further for programs it can name without tracing them (the
prediction forward, whole or in pieces): it keeps them, compiled, in `programs/` under that
directory, so a later process runs them without tracing, lowering or compiling the model again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pathlib
import pickle
import sys
import tempfile
from collections.abc import Callable

import jax

ENV = "MPC_JAX_COMPILATION_CACHE"
OFF = ("off", "none", "0", "false")


def default_dir() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "mpc_jax", "jax")


def enable(directory: str | None = None, min_compile_secs: float = 0.05) -> str | None:
  """Points JAX's persistent cache at the directory chosen as above; returns it (None: off).

  Programs that compile in under `min_compile_secs` are not stored.
  """
  chosen = directory or os.environ.get(ENV, "") or jax.config.jax_compilation_cache_dir or default_dir()
  if str(chosen).strip().lower() in OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  chosen = os.path.abspath(os.path.expanduser(str(chosen)))
  os.makedirs(chosen, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", chosen)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  return chosen


_SOURCE: list[str] = []


def _fingerprint() -> str:
  """What every stored program depends on besides its own key: mpc_jax's source (hashed once per
  process), the versions of Python, jax, jaxlib and flax, the devices and the host CPU, XLA's flags
  and the jax options that change lowering."""
  if not _SOURCE:
    h = hashlib.sha256()
    package = pathlib.Path(__file__).resolve().parent
    for f in sorted(package.rglob("*.py")):
      h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    _SOURCE.append(h.hexdigest())
  import flax
  import jaxlib

  device = jax.devices()[0]
  return repr(
    (
      _SOURCE[0],
      sys.version,
      jax.__version__,
      jaxlib.__version__,
      flax.__version__,
      device.platform,
      device.device_kind,
      device.client.platform_version,
      jax.device_count(),
      os.environ.get("XLA_FLAGS", ""),
      jax.config.jax_enable_x64,
      jax.config.jax_default_matmul_precision,
      _cpu_features(),
    )
  )


@functools.cache
def _cpu_features() -> str:
  """The host CPU's model and instruction-set flags (Linux; empty elsewhere): a compiled CPU program
  holds machine code for them, so a cache shared by unlike machines must not hand it across."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
  except OSError:
    return ""
  return "".join(sorted(set(lines)))


def programs_dir() -> pathlib.Path | None:
  """`programs/` in JAX's persistent cache directory; None while that cache is off."""
  if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
    return None
  return pathlib.Path(jax.config.jax_compilation_cache_dir) / "programs"


def stored_program(jitted, key: str | None, *args):
  """`jitted` compiled for arguments of `args`' types, traced once per machine: the compiled program
  is kept under `key` and a later process that asks for it again loads it without tracing, lowering
  or compiling (a `jax.stages.Compiled`, called like `jitted` on arguments of those types).

  `key` must name everything the traced program depends on apart from mpc_jax's source, the library
  versions, the devices and the host CPU (which are added here) and the types of `args`; with None
  (or the cache off) this returns `jitted`. A stored file that does not load is compiled again and
  replaced. Like JAX's own cache, the directory must be trusted: loading a program runs its code."""
  directory = programs_dir()
  if key is None or directory is None:
    return jitted
  leaves, treedef = jax.tree.flatten(args)
  types = f"{treedef}|{','.join(str(jax.typeof(x)) for x in leaves)}"
  path = _stored_path(directory, f"{key}|{types}", ".exe")
  from jax.experimental import serialize_executable

  try:
    payload, in_tree, out_tree, device_ids = pickle.loads(path.read_bytes())
    by_id = {d.id: d for d in jax.local_devices()}
    devices = [by_id[i] for i in device_ids]
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree, execution_devices=devices)
  except Exception:  # noqa: BLE001 - missing, truncated or foreign: compile again below
    pass
  try:
    compiled, fresh = _compile_afresh(jitted, args)
    if not fresh:
      return compiled
    device_ids = [d.id for d in compiled.runtime_executable().local_devices()]
    data = pickle.dumps((*serialize_executable.serialize(compiled), device_ids), protocol=5)
  except Exception:  # noqa: BLE001 - a program that cannot be kept (a host callback, a backend without it)
    return jitted
  _write(path, data)
  return compiled


def stored_object(key: str, make: Callable[[], object]):
  """`make()`, pickled under `key` (plus the fingerprint of `stored_program`) in `programs/` the first
  time and unpickled by later processes; just `make()` while the cache is off. For objects that are
  slow to build and pinned by mpc_jax's source, such as a model's graph definition."""
  directory = programs_dir()
  if directory is None:
    return make()
  path = _stored_path(directory, key, ".pkl")
  try:
    return pickle.loads(path.read_bytes())
  except Exception:  # noqa: BLE001 - missing, truncated or foreign: made again below
    pass
  made = make()
  try:
    data = pickle.dumps(made, protocol=5)
  except Exception:  # noqa: BLE001 - an object pickle cannot write: not kept
    return made
  _write(path, data)
  return made


def _stored_path(directory: pathlib.Path, key: str, suffix: str) -> pathlib.Path:
  """The file in `directory` for `key` on this build, machine and configuration (`_fingerprint`)."""
  return directory / (hashlib.sha256(f"{_fingerprint()}|{key}".encode()).hexdigest() + suffix)


def _write(path: pathlib.Path, data: bytes) -> None:
  """`data` to `path` atomically; nothing on a read-only or full cache (the caller goes on)."""
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
      tmp = f.name
      f.write(data)
    os.replace(tmp, path)
  except OSError:
    if tmp is not None:
      with contextlib.suppress(OSError):
        os.unlink(tmp)


def _compile_afresh(jitted, args) -> tuple:
  """`(jitted compiled for args, whether XLA compiled it here)`. JAX's persistent cache is off for the
  compile: XLA:CPU writes an executable it read from that cache without its kernels (it then fails
  with "Function ... not found"), so only a freshly compiled one may be stored."""
  from jax.experimental.compilation_cache import compilation_cache as jax_cache

  hits = []
  listener = lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None
  enabled = jax.config.jax_enable_compilation_cache
  jax.monitoring.register_event_listener(listener)
  try:
    jax.config.update("jax_enable_compilation_cache", False)
    jax_cache.reset_cache()  # else JAX keeps using the cache it already opened (under another key)
    compiled = jitted.lower(*args).compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    jax_cache.reset_cache()
    jax.monitoring.unregister_event_listener(listener)
  return compiled, not hits
