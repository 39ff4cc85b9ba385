"""Programs that trace fast, and the persistent compilation cache."""

import contextlib
import copy
import cProfile
import json
import os
import pstats

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpc_jax import compile_cache, train
from train_testlib import TINY_HRFORMER, tiny_config


def _config(stage1_blocks):
  c = tiny_config()
  h = copy.deepcopy(TINY_HRFORMER)
  h["STAGE1"]["NUM_BLOCKS"] = [stage1_blocks]
  c.model.hrformer_json = json.dumps(h)
  return c


def _python_calls_to_lower_backbone_gradient(config) -> int:
  """Python function calls made while lowering the gradient of a train-mode backbone pass (what the
  stage-1 step runs twice): a measure of tracing work that does not depend on the machine's speed
  or load."""
  model = train.build_model(config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  images = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3), np.float32))

  def loss(params, rest):
    model = nnx.merge(graphdef, params, rest, copy=True)
    maps = model.features(images)
    return sum(jnp.mean(m) for m in maps), nnx.state(model, nnx.Not(nnx.Param))

  fn = jax.jit(jax.grad(loss, has_aux=True))
  profile = cProfile.Profile()
  profile.enable()
  fn.lower(params, rest)
  profile.disable()
  return pstats.Stats(profile).total_calls


@pytest.mark.slow
def test_tracing_work_grows_linearly_with_depth():
  """4, 8 and 16 stage-1 bottlenecks (three BatchNorms each): each doubling adds about twice the
  previous increment (linear). With a single BatchNorm write indexed (`v[...] = x`, which walks the
  program traced so far) the ratio is above 2.1; call counts do not depend on the machine's load,
  so the margin is a fixed one."""
  _python_calls_to_lower_backbone_gradient(_config(1))  # one-time work: imports, caches
  calls = {n: _python_calls_to_lower_backbone_gradient(_config(n)) for n in (4, 8, 16)}
  first, second = calls[8] - calls[4], calls[16] - calls[8]
  assert first > 0
  assert second / first < 2.1, calls


def test_compilation_cache_directory_choice(tmp_path, monkeypatch):
  saved = (
    jax.config.jax_compilation_cache_dir,
    jax.config.jax_enable_compilation_cache,
    jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  try:
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.enable() == str(tmp_path / "env")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env") and (tmp_path / "env").is_dir()
    monkeypatch.chdir(tmp_path)
    assert compile_cache.enable("rel") == str(tmp_path / "rel")  # explicit beats the environment
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.enable() is None and not jax.config.jax_enable_compilation_cache
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == os.path.join(str(tmp_path / "xdg"), "mpc_jax", "jax")
  finally:
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_enable_compilation_cache", saved[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[2])
    compile_cache._reopen_jax_cache()


def test_enable_moves_a_cache_that_jax_has_opened(tmp_path):
  """JAX opens its cache at the first compile; `enable` pointed elsewhere afterwards is obeyed."""
  saved = (
    jax.config.jax_compilation_cache_dir,
    jax.config.jax_enable_compilation_cache,
    jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  try:
    compile_cache.enable(str(tmp_path / "a"), min_compile_secs=0.0)
    jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(4.0))
    assert list((tmp_path / "a").glob("jit_*-cache"))
    compile_cache.enable(str(tmp_path / "b"), min_compile_secs=0.0)
    jax.jit(lambda x: x * 5.0 - 2.0)(jnp.arange(4.0))
    assert list((tmp_path / "b").glob("jit_*-cache")), "written to the directory opened first"
  finally:
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_enable_compilation_cache", saved[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[2])
    compile_cache._reopen_jax_cache()


def test_stored_program_is_traced_once_per_key_and_types(programs_cache, monkeypatch):
  """A program stored under a key runs in a later process (a new jitted function here) without
  tracing, lowering or compiling; another key, other argument types, another build of mpc_jax, other
  XLA flags, another CPU or a damaged file trace it again, and no key or no cache leave the jitted
  function as it is."""
  from jax._src import monitoring

  traces = []
  events = []
  listener = lambda event, secs, **kw: events.append(event)
  monitoring.register_event_duration_secs_listener(listener)

  def fresh():  # a new function each time: jax's in-memory caches cannot answer for it
    def f(w, x):
      traces.append(x.shape)
      return jnp.tanh(x @ w) * 2.0

    return jax.jit(f)

  w, x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), jnp.arange(6.0).reshape(2, 3)
  want = lambda w, x: np.tanh(np.asarray(x, np.float64) @ np.asarray(w, np.float64)) * 2.0
  run = lambda key, *args: np.asarray(compile_cache.stored_program(fresh(), key, *args)(*args))
  stored = lambda: list(programs_cache.glob("*.exe"))
  try:
    np.testing.assert_allclose(run("k", w, x), want(w, x), rtol=1e-6)
    assert len(traces) == 1 and len(stored()) == 1
    events.clear()
    np.testing.assert_allclose(run("k", w, x), want(w, x), rtol=1e-6)
    assert len(traces) == 1  # loaded, not traced
    assert not [e for e in events if e.endswith(("to_mlir_module_duration", "backend_compile_duration"))], (
      events
    )
    np.testing.assert_allclose(run("k", w, np.asarray(x)), want(w, x), rtol=1e-6)  # numpy arguments too
    assert len(traces) == 1
  finally:
    monitoring.unregister_event_duration_listener(listener)
  run("k2", w, x)
  x3 = jnp.ones((5, 3))
  np.testing.assert_allclose(run("k", w, x3), want(w, x3), rtol=1e-6)
  assert len(traces) == 3 and len(stored()) == 3
  with monkeypatch.context() as m:
    m.setattr(compile_cache, "_SOURCE", ["another build of mpc_jax"])
    run("k", w, x)
  with monkeypatch.context() as m:
    m.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=false")
    run("k", w, x)
  with monkeypatch.context() as m:
    m.setattr(compile_cache, "_cpu_features", lambda: "flags : fpu sse2")
    run("k", w, x)
  assert len(traces) == 6

  for path in stored():
    path.write_bytes(path.read_bytes()[:40])
  np.testing.assert_allclose(run("k", w, x), want(w, x), rtol=1e-6)
  assert len(traces) == 7
  run("k", w, x)
  assert len(traces) == 7  # the damaged file was replaced

  jitted = fresh()
  assert compile_cache.stored_program(jitted, None, w, x) is jitted
  jax.config.update("jax_enable_compilation_cache", False)
  assert compile_cache.stored_program(jitted, "k", w, x) is jitted


def test_stored_program_is_compiled_afresh_when_jax_cache_holds_it(programs_cache):
  """A program whose XLA compile JAX's persistent cache already holds is stored all the same, and the
  stored program runs in a later process: XLA:CPU writes an executable it read from JAX's cache
  without its kernels ("Function ... not found"), so the stored one must be compiled here."""
  min_secs = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  hits = []
  listener = lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None

  def fresh():
    return jax.jit(lambda x: jax.lax.rsqrt(x + 1.0) * jnp.sin(x))

  x = jnp.linspace(0.0, 3.0, 1000)
  want = np.sin(np.asarray(x, np.float64)) / np.sqrt(np.asarray(x, np.float64) + 1.0)
  try:
    fresh()(x)  # written to JAX's cache
    jax.monitoring.register_event_listener(listener)
    fresh().lower(x).compile()
    assert hits, "JAX's cache did not serve the program: the test's premise does not hold"
    compile_cache.stored_program(fresh(), "rsqrt", x)
    assert len(list(programs_cache.glob("*.exe"))) == 1
    jax.jit(lambda x: x * 7.0)(x)  # JAX's cache in use again
    compile_cache.stored_program(
      fresh(), "rsqrt under another key", x
    )  # JAX's cache is not read for it either
    assert len(list(programs_cache.glob("*.exe"))) == 2
    hits.clear()
    loaded = compile_cache.stored_program(fresh(), "rsqrt", x)
    assert isinstance(loaded, jax.stages.Compiled) and not hits
    np.testing.assert_allclose(np.asarray(loaded(x)), want, rtol=1e-5)
  finally:
    jax.monitoring.unregister_event_listener(listener)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)


def test_stored_object_is_made_once_per_key(programs_cache):
  """`stored_object` makes its object once for a key and unpickles it later; a damaged file is made
  again, and with the cache off every call makes it."""
  made = []
  make = lambda: made.append(1) or {"graph": [1, 2, 3]}
  assert compile_cache.stored_object("k", make) == {"graph": [1, 2, 3]}
  assert compile_cache.stored_object("k", make) == {"graph": [1, 2, 3]} and len(made) == 1
  compile_cache.stored_object("k2", make)
  assert len(made) == 2
  for f in programs_cache.glob("*.pkl"):
    f.write_bytes(f.read_bytes()[:5])
  assert compile_cache.stored_object("k", make) == {"graph": [1, 2, 3]} and len(made) == 3
  compile_cache.stored_object("k", make)
  assert len(made) == 3
  jax.config.update("jax_enable_compilation_cache", False)
  compile_cache.stored_object("k", make)
  assert len(made) == 4


@contextlib.contextmanager
def _jax_events():
  """JAX's monitoring events (plain and timed), recorded while in use: `with _jax_events() as events`."""
  events = []
  plain = lambda event, **kw: events.append(event)
  timed = lambda event, secs, **kw: events.append(event)
  jax.monitoring.register_event_listener(plain)
  jax.monitoring.register_event_duration_secs_listener(timed)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_listener(plain)
    jax.monitoring.unregister_event_duration_listener(timed)


def _program():
  """A new jitted function (jax's in-memory caches cannot answer for it), its arguments and the
  values it must return (computed by numpy)."""
  w, x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), jnp.arange(6.0).reshape(2, 3)
  want = np.tanh(np.asarray(x, np.float64) @ np.asarray(w, np.float64)).sum(axis=0) * 3.0
  return jax.jit(lambda w, x: jnp.tanh(x @ w).sum(axis=0) * 3.0), (w, x), want


def test_compile_in_child_compiles_in_a_child_process_and_loads_from_the_cache(programs_cache, monkeypatch):
  """With freed memory retained (the one-arena heap), the program is compiled by a child process into
  JAX's cache and read from there; the jitted function's own call then reuses that executable, and
  a second request for the same program needs no child."""
  from mpc_jax import host_memory

  monkeypatch.setattr(host_memory, "retained", lambda: True)
  decoy = programs_cache.parent / "decoy" / "mpc_jax"  # another mpc_jax in the working folder
  decoy.mkdir(parents=True)
  (decoy / "__init__.py").write_text("")
  (decoy / "compile_cache.py").write_text("raise SystemExit(3)")
  monkeypatch.chdir(decoy.parent)
  jitted, args, want = _program()
  with _jax_events() as events:
    compiled, where = compile_cache.compile_in_child(jitted.lower(*args))
  assert where == "child"
  assert "/jax/compilation_cache/cache_hits" in events  # read from the cache the child wrote
  assert list(programs_cache.parent.glob("jit_*-cache")), "the child wrote nothing to JAX's cache"
  np.testing.assert_allclose(np.asarray(compiled(*args)), want, rtol=1e-5)
  with _jax_events() as events:
    np.testing.assert_allclose(np.asarray(jitted(*args)), want, rtol=1e-5)
  assert not [e for e in events if "compil" in e], events  # the call reused the executable

  children = []
  monkeypatch.setattr(compile_cache, "_run_compile_child", lambda *a: children.append(a))
  again, _, _ = _program()
  assert compile_cache.compile_in_child(again.lower(*args))[1] == "cache" and not children


def test_compile_in_child_compiles_here_when_it_cannot_help_or_fails(programs_cache, monkeypatch, caplog):
  """No child without the one-arena heap, with JAX's cache off, or for a program with host callbacks;
  a child that fails is logged and the program compiled here, with the same values."""
  import sys

  from mpc_jax import host_memory

  children = []
  real_child = compile_cache._run_compile_child
  monkeypatch.setattr(compile_cache, "_run_compile_child", lambda *a: children.append(a) or real_child(*a))
  jitted, args, want = _program()
  compiled, where = compile_cache.compile_in_child(jitted.lower(*args))
  assert where == "here" and not children
  np.testing.assert_allclose(np.asarray(compiled(*args)), want, rtol=1e-5)

  monkeypatch.setattr(host_memory, "retained", lambda: True)

  def with_callback(x):
    jax.debug.callback(lambda v: None, x.sum())
    return x * 2.0

  compiled, where = compile_cache.compile_in_child(jax.jit(with_callback).lower(args[1]))
  assert where == "here" and not children
  np.testing.assert_allclose(np.asarray(compiled(args[1])), np.asarray(args[1]) * 2.0)

  monkeypatch.setattr(sys, "executable", "/bin/false")  # the child exits with status 1
  jitted, args, want = _program()
  with caplog.at_level("WARNING", logger="mpc_jax.compile_cache"):
    compiled, where = compile_cache.compile_in_child(jitted.lower(*args))
  assert where == "here" and len(children) == 1
  assert "child process failed: exit status 1" in caplog.text
  np.testing.assert_allclose(np.asarray(compiled(*args)), want, rtol=1e-5)

  jax.config.update("jax_enable_compilation_cache", False)
  jitted, args, want = _program()
  assert compile_cache.compile_in_child(jitted.lower(*args))[1] == "here" and len(children) == 1


def test_compiled_by_child_compiles_once_per_argument_types(programs_cache, monkeypatch):
  """`compiled_by_child` hands each new set of argument types to `compile_in_child` once, before the
  first call, and returns the jitted function's values."""
  from mpc_jax import host_memory

  monkeypatch.setattr(host_memory, "retained", lambda: True)
  lowered = []
  real = compile_cache.compile_in_child
  monkeypatch.setattr(compile_cache, "compile_in_child", lambda lw: lowered.append(lw) or real(lw))
  jitted, (w, x), want = _program()
  fn = compile_cache.compiled_by_child(jitted)
  for _ in range(2):
    np.testing.assert_allclose(np.asarray(fn(w, x)), want, rtol=1e-5)
  assert len(lowered) == 1
  x3 = jnp.concatenate([x, x[:1]])
  want3 = np.tanh(np.asarray(x3, np.float64) @ np.asarray(w, np.float64)).sum(axis=0) * 3.0
  np.testing.assert_allclose(np.asarray(fn(w, x3)), want3, rtol=1e-5)
  assert len(lowered) == 2
  with _jax_events() as events:
    fn(w, x3)
  assert not [e for e in events if "compil" in e] and len(lowered) == 2
