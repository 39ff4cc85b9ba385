"""Test setup: 8 simulated CPU devices, so sharding and collectives are exercised on a laptop.

Compiled programs are cached on disk (`MPC_JAX_TEST_CACHE`, default under the system temp dir),
so the same model compiled by several tests or test processes is compiled once.

Reference fixtures live in `tests/fixtures/` (copies of `../shared/fixtures/`), so parity tests
never skip in a clone. Tests marked `parity` must not skip at all when
`MPC_JAX_STRICT_SKIPS=1` (CI sets it): a skip there is reported as a failure.
"""

import os
import tempfile

from train_testlib import TEST_XLA_FLAGS  # noqa: E402

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import jax
import pytest

jax.config.update(
  "jax_compilation_cache_dir",
  os.environ.get("MPC_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "mpc_jax_test_cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
SHARED_FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir():
  """`tests/fixtures/`, the reference numbers the parity tests compare against."""
  if not FIXTURES.is_dir():
    raise FileNotFoundError(f"{FIXTURES} is missing: the parity fixtures are part of the repository")
  return FIXTURES


@pytest.fixture
def programs_cache(tmp_path):
  """JAX's cache directory (and so `compile_cache.programs_dir`) pointed at `tmp_path` for one test."""
  from mpc_jax import compile_cache

  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  jax.config.update("jax_enable_compilation_cache", True)
  compile_cache._reopen_jax_cache()  # JAX opens its cache once and keeps the directory it opened
  yield tmp_path / "programs"
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_enable_compilation_cache", saved[1])
  compile_cache._reopen_jax_cache()


def pytest_configure(config):
  config.addinivalue_line("markers", "parity: compares against reference numbers; must not skip in CI")
  config.addinivalue_line("markers", "slow: end-to-end test that takes more than a few seconds")


def _strict_skips():
  return os.environ.get("MPC_JAX_STRICT_SKIPS", "0") not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if report.skipped and _strict_skips() and item.get_closest_marker("parity") is not None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"parity test skipped under MPC_JAX_STRICT_SKIPS=1: {reason}"


# Under `-n 2` (`--dist loadfile --no-loadscope-reorder`, pytest.ini) each file goes whole to the next
# free worker, in collection order. The files that compile the most start first, so the last file to
# start is a short one; the rest keep their order. Rough cost order of a cold run (`--durations=0`).
_HEAVY_FIRST = (
  "test_model.py",
  "test_train_resume.py",
  "test_cli.py",
  "test_compile.py",
  "test_parity.py",
  "test_losses.py",
  "test_predict.py",
  "test_convert.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(_HEAVY_FIRST)))  # stable within a file
