"""JAX's persistent compilation cache, on by default for every mpc-jax command and benchmark.

A compiled program (the training step, the forward at one input shape) is written to the cache
directory and reused by every later process that builds the same program, so a restart or a
second run skips XLA's compile (and, on GPUs, its autotuning). The directory, in order:
an explicit argument (`config.compilation_cache_dir`), `$MPC_JAX_COMPILATION_CACHE`, a directory
JAX was already given, else `~/.cache/mpc_jax/jax` (under `$XDG_CACHE_HOME` where set). The
value `off` turns the cache off.

`stored_program` goes one step further for programs it can name without tracing them (the
prediction forward, whole or in pieces): it keeps them, lowered, in `programs/` under that
directory, so a later process runs them without tracing or lowering the model again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import sys
import tempfile

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
  process), the versions of Python, jax, jaxlib and flax, the devices, XLA's flags and the jax
  options that change lowering."""
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
    )
  )


def programs_dir() -> pathlib.Path | None:
  """`programs/` in JAX's persistent cache directory; None while that cache is off."""
  if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
    return None
  return pathlib.Path(jax.config.jax_compilation_cache_dir) / "programs"


def stored_program(jitted, key: str | None, *args):
  """`jitted` for arguments of `args`' types, traced once per machine: the lowered program is kept
  under `key` (`jax.export`'s serialized form) and a later process that asks for it again gets it
  without tracing or lowering; XLA's compile is then read from JAX's cache like any other.

  `key` must name everything the traced program depends on apart from mpc_jax's source, the library
  versions and the devices (which are added here) and the types of `args`; with None (or the cache
  off) this returns `jitted`. A stored file that does not load is traced again and replaced."""
  directory = programs_dir()
  if key is None or directory is None:
    return jitted
  leaves, treedef = jax.tree.flatten(args)
  types = f"{treedef}|{','.join(str(jax.typeof(x)) for x in leaves)}"
  path = directory / (hashlib.sha256(f"{_fingerprint()}|{key}|{types}".encode()).hexdigest() + ".bin")
  try:
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
  except Exception:  # noqa: BLE001 - missing, truncated or foreign: trace again below
    exported = None
  if exported is None:
    try:
      exported = jax.export.export(jitted)(*args)
    except Exception:  # noqa: BLE001 - a program jax.export does not take (a host callback)
      return jitted
    tmp = None
    try:
      directory.mkdir(parents=True, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as f:
        tmp = f.name
        f.write(exported.serialize())
      os.replace(tmp, path)
    except OSError:  # a read-only or full cache: this process still runs the program
      if tmp is not None:
        with contextlib.suppress(OSError):
          os.unlink(tmp)
  return jax.jit(exported.call)
