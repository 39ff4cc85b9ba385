"""Process group, mesh, global batches and preemption for training.

One mesh axis, `data`: the global batch is split along it and everything else is replicated.
Each process feeds its own slice of the global batch; `global_batch` assembles the global array
with `jax.make_array_from_process_local_data`, so the same code runs on one device, on several
local devices, and on several hosts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding


_KEEP_BARRIERS = "--xla_disable_hlo_passes=cse_barrier_expander"


def keep_remat_barriers_on_cpu() -> bool:
  """Makes rematerialisation save memory on XLA:CPU; call before JAX creates its backends.

  `jax.checkpoint` (`nnx.remat`) keeps its recomputation apart with optimization barriers. XLA:CPU
  expands those barriers early and common-subexpression elimination then merges the recomputation
  back into the forward pass, so a rematerialised step on the CPU stores every activation anyway
  (the same XLA peak as without remat). Disabling the pass `cse_barrier_expander` keeps them.
  Applied only when the CPU is certainly the backend (`JAX_PLATFORMS=cpu`, or no GPU/TPU plugin
  installed); returns whether `XLA_FLAGS` now holds the flag.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if _KEEP_BARRIERS in flags:
    return True
  platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
  accelerator = any(
    importlib.util.find_spec(m) is not None
    for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
  )
  if platforms.strip().lower() != "cpu" and (accelerator or platforms):
    return False
  from jax._src import xla_bridge  # no public API says whether the backends exist yet

  if getattr(xla_bridge, "backends_are_initialized", lambda: False)():
    logging.warning(
      "remat on CPU: JAX's backends already exist, so XLA_FLAGS=%s cannot take effect "
      "in this process; rematerialisation will save no memory on the CPU",
      _KEEP_BARRIERS,
    )
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {_KEEP_BARRIERS}".strip()
  return True


def maybe_initialize(cfg) -> None:
  """`jax.distributed.initialize` from `cfg` (a `ConfigDict` with `enabled`, `coordinator_address`,
  `num_processes`, `process_id`, `local_device_ids`); a no-op when not enabled or already done.

  Empty / negative fields are left to JAX's auto-detection (SLURM, TPU pods, ...).
  """
  if cfg is None or not cfg.enabled or jax.distributed.is_initialized():
    return
  kwargs = {}
  if cfg.coordinator_address:
    kwargs["coordinator_address"] = cfg.coordinator_address
  if cfg.num_processes >= 0:
    kwargs["num_processes"] = cfg.num_processes
  if cfg.process_id >= 0:
    kwargs["process_id"] = cfg.process_id
  if cfg.local_device_ids:
    kwargs["local_device_ids"] = [int(i) for i in str(cfg.local_device_ids).split(",")]
  logging.info("jax.distributed.initialize(%s)", kwargs)
  jax.distributed.initialize(**kwargs)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def make_mesh(num_devices: int = -1) -> jax.sharding.Mesh:
  """A 1-axis mesh `('data',)` over `num_devices` devices (all of them when -1)."""
  n = jax.device_count() if num_devices in (-1, None, 0) else num_devices
  return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, jax.P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, jax.P("data"))


def local_batch_size(global_batch_size: int, mesh) -> int:
  """Rows each process feeds. The global batch must split evenly over devices and processes."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {n} devices")
  return global_batch_size // jax.process_count()


def process_batch_block(global_batch_size: int, mesh) -> tuple[int, int]:
  """`(block, num_blocks)`: this process's rows of a global batch sharded along `data` are the
  contiguous block `[block * b, (block + 1) * b)`, `b = global_batch_size // num_blocks` (what
  `jax.make_array_from_process_local_data` expects it to feed). The input pipeline reads that block
  of every global batch, so any number of processes assembles the same global batches."""
  local = local_batch_size(global_batch_size, mesh)
  rows = [
    (s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
    for s in batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,)).values()
  ]
  lo, hi = min(r[0] for r in rows), max(r[1] for r in rows)
  if hi - lo != local or lo % local:
    raise ValueError(
      f"this process's devices hold rows [{lo}, {hi}) of the global batch of "
      f"{global_batch_size}, not a contiguous block of {local}: use a mesh whose "
      "'data' axis lists each process's devices together"
    )
  return lo // local, jax.process_count()


def global_batch(local: dict, mesh) -> dict:
  """Process-local numpy arrays (leading axis = this process's rows) -> global `jax.Array`s
  sharded along `data`. Non-array leaves (names, sizes) are dropped."""
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x)

  out = {}
  for name, value in local.items():
    if isinstance(value, (list, tuple)):
      out[name] = [put(v) for v in value]
    elif isinstance(value, np.ndarray) and value.dtype != object:
      out[name] = put(value)
  return out


class PreemptionGuard:
  """Turns SIGTERM (and SIGINT when asked) into a flag the loop polls between steps.

  `should_stop(step)` is collective when there are several processes: every process gets the
  same answer (any process signalled -> all stop), so they all save the same step and exit.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._flag = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will save a checkpoint and stop", signum)
    self._flag.set()

  def should_stop(self) -> bool:
    flag = self._flag.is_set()
    if jax.process_count() > 1:
      flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
    return flag

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
