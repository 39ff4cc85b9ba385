"""`mpc_jax.host_memory`: with freed memory retained, a program's temporaries are not faulted in again
on each call; without it (or when asked too late) they are."""

import json
import os
import platform
import subprocess
import sys

import pytest

from mpc_jax import host_memory

pytestmark = pytest.mark.skipif(
  platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# A program whose temporaries (two [4096, 4096] float32 intermediates, 64 MiB each) XLA allocates per
# call: 40 warm-up calls (glibc's one heap grows while the process settles: the first few calls may
# not find a freed block to reuse), then 5 calls whose minor page faults are printed.
CALLS = r"""
import json, os, resource, sys
when = sys.argv[1]
import jax, jax.numpy as jnp
from mpc_jax import host_memory
if when == "late":
  jax.devices()
set_ = host_memory.retain_freed_memory()
f = jax.jit(lambda x: jnp.sum(jnp.sin(x[:, None] * x[None, :]) * jnp.cos(x[None, :] - x[:, None]), axis=1))
x = jnp.linspace(0.0, 1.0, 4096)
for _ in range(40):
  jax.block_until_ready(f(x))
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"set": set_, "faults": faults}))
"""
PAGES_PER_TEMPORARY = 4096 * 4096 * 4 // 4096


def _calls(when: str, **env) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **env}
  out = subprocess.run(
    [sys.executable, "-c", CALLS, when], capture_output=True, text=True, env=env, check=True
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_retained_memory_is_not_faulted_in_again():
  kept = _calls("early")
  assert kept["set"] is True
  assert max(kept["faults"]) < PAGES_PER_TEMPORARY // 8, kept


def test_without_it_every_call_faults_its_temporaries_in():
  """The control: glibc's defaults, by the off switch or by asking after JAX made its CPU client."""
  off = _calls("early", **{host_memory.ENV: "0"})
  late = _calls("late")
  assert off["set"] is False and late["set"] is False
  for got in (off, late):
    assert min(got["faults"]) > PAGES_PER_TEMPORARY // 2, got


def test_not_set_for_an_accelerator(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert host_memory._cpu_backend_expected() is False
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory._cpu_backend_expected() is True


def test_not_set_once_jax_has_its_backends():
  import jax

  jax.devices()
  if not host_memory._applied:  # this process did not set it before JAX started
    assert host_memory.retain_freed_memory() is False


def test_a_bad_switch_value_is_an_error_naming_it(monkeypatch):
  monkeypatch.setattr(host_memory, "_applied", [])
  monkeypatch.setenv(host_memory.ENV, "maybe")
  with pytest.raises(ValueError, match="MPC_JAX_RETAIN_FREED_MEMORY='maybe'"):
    host_memory.retain_freed_memory()
