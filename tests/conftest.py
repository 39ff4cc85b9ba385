"""Test setup: 8 simulated CPU devices, so sharding and collectives are exercised on a laptop.

Compiled programs are cached on disk (`MPC_JAX_TEST_CACHE`, default under the system temp dir),
so the same model compiled by several tests or test processes is compiled once.
"""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import jax
import pytest

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("MPC_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "mpc_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir():
  """`../shared/fixtures` next to the repository root; tests that need it skip where it is absent."""
  if not FIXTURES.is_dir():
    pytest.skip(f"fixtures not found at {FIXTURES}")
  return FIXTURES
