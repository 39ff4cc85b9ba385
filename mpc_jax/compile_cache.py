"""JAX's persistent compilation cache, on by default for every mpc-jax command and benchmark.

A compiled program (the training step, the forward at one input shape) is written to the cache
directory and reused by every later process that builds the same program, so a restart or a
second run skips XLA's compile (and, on GPUs, its autotuning). The directory, in order:
an explicit argument (`config.compilation_cache_dir`), `$MPC_JAX_COMPILATION_CACHE`, a directory
JAX was already given, else `~/.cache/mpc_jax/jax` (under `$XDG_CACHE_HOME` where set). The
value `off` turns the cache off.
"""

from __future__ import annotations

import os

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
