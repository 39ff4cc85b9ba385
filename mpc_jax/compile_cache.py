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

`compile_in_child` has XLA's compile of a program done by a child process on the CPU, which writes it
to the cache for this process to load (`mpc-jax train` compiles its steps and validation this way,
`config.compile_in_child`): a process whose heap XLA's compile fragmented runs its programs more
slowly (see its docstring).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable

import jax

log = logging.getLogger(__name__)

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
    _reopen_jax_cache()
    return None
  chosen = os.path.abspath(os.path.expanduser(str(chosen)))
  os.makedirs(chosen, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", chosen)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  _reopen_jax_cache()
  return chosen


def _reopen_jax_cache() -> None:
  """Makes JAX open its cache again from the current settings: it opens it once, at the first
  compile, and would otherwise go on reading and writing the directory it opened then."""
  from jax.experimental.compilation_cache import compilation_cache as jax_cache

  jax_cache.reset_cache()


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
  hits = []
  listener = lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None
  enabled = jax.config.jax_enable_compilation_cache
  jax.monitoring.register_event_listener(listener)
  try:
    jax.config.update("jax_enable_compilation_cache", False)
    _reopen_jax_cache()  # else JAX keeps using the cache it already opened (under another key)
    compiled = jitted.lower(*args).compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    _reopen_jax_cache()
    jax.monitoring.unregister_event_listener(listener)
  return compiled, not hits


def compile_in_child(lowered) -> tuple:
  """`(lowered.compile(), where)`: the same executable, with XLA's compile done, where that helps, by a
  child process that writes it to JAX's persistent cache, from which this process then loads it.

  It helps on the CPU while `host_memory.retain_freed_memory` holds the process to one malloc arena:
  there XLA's compile contends for that arena, and it leaves the heap so fragmented that the program,
  run by the process that compiled it, spends 25-40% more CPU time in its fused kernels. The child runs
  with glibc's default malloc. Only single-process CPU runs with JAX's cache on and no host callbacks in
  the program use it; others, and any program whose child fails (logged), are compiled here.
  `where`: 'child', 'cache' (compiled already: in JAX's cache or in this process) or 'here'."""
  from mpc_jax import host_memory

  if not (host_memory.retained() and jax.process_count() == 1 and programs_dir() is not None):
    return lowered.compile(), "here"
  from jax._src import compiler

  original = compiler.compile_or_get_cached
  where = []

  def compile_elsewhere(
    *args, **kwargs
  ):  # jax's (backend, computation, devices, options, host_callbacks, ...)
    where.append("here")
    try:
      backend, computation, devices, options, host_callbacks = args[:5]
      if backend.platform == "cpu" and not host_callbacks:
        key = compiler._get_cache_key(options, backend, computation, devices)
        if key is not None and compiler._is_executable_in_cache(backend, key):
          where[-1] = "cache"
        elif key is not None:
          _run_compile_child(computation, devices, options)
          if not compiler._is_executable_in_cache(backend, key):
            raise RuntimeError("its program is not in JAX's cache under this process's key")
          where[-1] = "child"
    except Exception as e:  # noqa: BLE001 - any failure (another jax's internals too): compiled here
      log.warning("compiling here: the compile in a child process failed: %s", e)
    return original(*args, **kwargs)

  compiler.compile_or_get_cached = compile_elsewhere
  try:
    compiled = lowered.compile()
  finally:
    compiler.compile_or_get_cached = original
  return compiled, where[0] if where else "cache"


def compiled_by_child(jitted) -> Callable:
  """`jitted` (a `jax.jit` function), with its program for each new set of argument types compiled by
  `compile_in_child` before its first call; `jitted` then reuses that executable."""
  seen = set()

  def call(*args):
    leaves, treedef = jax.tree.flatten(args)
    types = (treedef, tuple(jax.typeof(x) for x in leaves))
    if types not in seen:
      seen.add(types)
      compile_in_child(jitted.lower(*args))
    return jitted(*args)

  return call


def _run_compile_child(computation, devices, options) -> None:
  """Compiles `computation` in `python -m mpc_jax.compile_cache`, which writes it to JAX's cache."""
  from jax._src.interpreters import mlir

  payload = {
    "module": mlir.module_to_bytecode(computation),
    "device_ids": [d.id for d in devices.flat],
    "options": options.SerializeAsString(),
    "cache_dir": os.path.abspath(jax.config.jax_compilation_cache_dir),
  }
  env = dict(os.environ, MPC_JAX_RETAIN_FREED_MEMORY="0", JAX_PLATFORMS="cpu")
  with tempfile.NamedTemporaryFile(suffix=".pkl") as f:
    f.write(pickle.dumps(payload, protocol=5))
    f.flush()
    done = subprocess.run(  # run from above this package, so `-m` finds this mpc_jax, not the cwd's
      [sys.executable, "-m", "mpc_jax.compile_cache", f.name],
      cwd=pathlib.Path(__file__).resolve().parents[1],
      env=env,
      capture_output=True,
      text=True,
    )
  if done.returncode != 0:
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    raise RuntimeError(f"exit status {done.returncode}" + (f": {lines[-1]}" if lines else ""))


def _compile_child_main(path: str) -> None:
  """The child of `compile_in_child`: compiles the module in `path` into JAX's cache."""
  import numpy as np
  from jax._src import compiler
  from jax._src.interpreters import mlir
  from jax._src.lib import xla_client
  from jax._src.lib.mlir import ir

  with open(path, "rb") as f:
    payload = pickle.load(f)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", payload["cache_dir"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  by_id = {d.id: d for d in jax.devices("cpu")}
  devices = [by_id[i] for i in payload["device_ids"]]
  options = xla_client.CompileOptions.ParseFromString(payload["options"])
  with mlir.make_ir_context():
    module = ir.Module.parse(payload["module"])
    compiler.compile_or_get_cached(
      devices[0].client,
      module,
      np.array(devices, dtype=object),
      options,
      [],
      xla_client.DeviceList(tuple(devices)),
    )


if __name__ == "__main__":
  _compile_child_main(sys.argv[1])
