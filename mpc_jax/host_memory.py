"""Host memory on the CPU backend: freed memory kept mapped, so each call does not fault it in again.

XLA:CPU allocates a program's temporaries with malloc when it is called (about 9 GB for an HRT-base
2x256 stage-1 step) and frees them when it returns. glibc gives such blocks back to the kernel (blocks
over 32 MB are mapped and unmapped one by one, and XLA's worker threads allocate from per-thread
arenas that cannot keep blocks over 64 MB), so every call touches fresh pages again: 2 million page
faults per step, which make it 1.3-2x slower on 2-core VMs (`bench/bench_host_memory.py`).

`retain_freed_memory()` tells glibc to serve every thread from its one main heap, never to map blocks
on their own and never to trim that heap. The process then keeps its peak memory, and later calls
reuse those pages (`bench/bench_host_memory.py` measures both). The one arena costs elsewhere: threads
contend for it, so XLA's compile of the stage-1 step took 115 s against 80 s, and that step, run by
the process that compiled it, took 8.2 s against 5.8 s read from JAX's cache; so `mpc-jax train` has
its steps compiled by a child process with glibc's defaults (`compile_cache.compile_in_child`). It
must run before JAX creates its CPU client, whose threads pick their arena when they first
allocate; `mpc-jax train`, `eval` and `predict` and the benchmarks call it first. In a notebook, call
it before the first JAX computation.

`MPC_JAX_RETAIN_FREED_MEMORY=0` turns it off, `=1` turns it on where an accelerator plugin is installed.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform

ENV = "MPC_JAX_RETAIN_FREED_MEMORY"
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_OFF, _ON = ("0", "false", "no", "off"), ("1", "true", "yes", "on")
_applied: list[bool] = []
# The same settings for a process not yet started (glibc reads GLIBC_TUNABLES at its start).
GLIBC_TUNABLES = (
  "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"
)


def _cpu_backend_expected() -> bool:
  """True when JAX will run on the CPU: `JAX_PLATFORMS` starts with cpu, or it is unset and no
  accelerator plugin (CUDA/ROCm `jax_plugins` entry point, libtpu) is installed."""
  import jax

  chosen = (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "").strip()
  if chosen:
    return chosen.split(",")[0].strip().lower() == "cpu"
  from importlib import metadata

  if list(metadata.entry_points(group="jax_plugins")) or importlib.util.find_spec("libtpu") is not None:
    return False
  try:
    import jax_plugins  # namespace package of older plugins
  except ImportError:
    return True
  return not list(getattr(jax_plugins, "__path__", []))


def retained() -> bool:
  """Whether `retain_freed_memory` set glibc's malloc in this process."""
  return bool(_applied and _applied[0])


def retain_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory mapped (see the module docstring); True when it is set.

  Does nothing, and returns False, off Linux/glibc, when JAX will not run on the CPU, when JAX's
  backends already exist (their threads would keep their own arenas), or with `MPC_JAX_RETAIN_FREED_MEMORY=0`."""
  if _applied:
    return _applied[0]
  wanted = os.environ.get(ENV, "").strip().lower()
  if wanted not in ("", "auto", *_OFF, *_ON):
    raise ValueError(f"{ENV}={os.environ[ENV]!r}: use 1 (on), 0 (off) or leave it unset (automatic)")
  if wanted in _OFF:
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  from jax._src import xla_bridge

  if xla_bridge.backends_are_initialized():
    return False
  if wanted not in _ON and not _cpu_backend_expected():
    return False
  libc = ctypes.CDLL(None)
  ok = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
  _applied.append(ok)
  return ok
