"""An eval-mode forward run as separately compiled pieces: one XLA program per distinct piece.

HRT-base repeats identical modules (four HRModules in stage 3, two in stage 4), and branch i holds the
same blocks in every stage once drop path is taken out (`predict._piecewise_forward` puts Identity in
its place). Jitted whole, XLA traces and compiles every copy; called piece by piece (HRModules branch
by branch, then their exchange), pieces of one structure share one traced and compiled program (keyed
by their graph definition and input types), compiled with `QUICK_CPU_OPTIONS` on the CPU: HRT-base at
512 px needs 3.1 s of XLA compile instead of the whole model's 4.9 s on 2 CPU cores. The compiled
pieces are kept beside JAX's persistent cache (`compile_cache.stored_program`), so a later process
loads them without tracing the model. The values are the same as the whole program's, which `program`
also serves (the Predictor's whole forward).
"""

from __future__ import annotations

import hashlib
import pickle
import weakref

import jax
from flax import nnx

from mpc_jax import compile_cache

# XLA:CPU options for pieces: LLVM at -O1 instead of -O3 compiles HRT-base's pieces at 512 px in
# 3.1 s instead of 3.5 s on 2 cores, and runs them at the same speed (within 3%).
QUICK_CPU_OPTIONS = {"xla_backend_optimization_level": 1}
# ((graph definition, state treedef), function, argument types, quick) -> jitted `(leaves, *args) -> fn(module, *args)`
_PROGRAMS: dict = {}
# id(module) -> ((graph definition, state treedef), state leaves, {(function, argument types): program}),
# dropped with the module (by id: nnx.List is unhashable); valid while the module is not changed
_SPLITS: dict = {}


def apply(module, *args):
  """`module(*args)`: the function of a piece that is one whole module."""
  return module(*args)


def _types(args) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return (treedef, *(jax.typeof(x) for x in leaves))


def _stored_key(graphdef, treedef, fn) -> str | None:
  """A key naming the program across processes, or None when mpc_jax's source does not pin it (a
  function or module class defined elsewhere, a closure, or a graph definition that cannot be pickled)."""
  if not fn.__module__.startswith("mpc_jax.") or "<locals>" in fn.__qualname__ or fn.__closure__:
    return None
  classes = [node.type for node in graphdef.nodes if hasattr(node, "type")]  # NodeRefs name earlier nodes
  if not all(c.__module__ == "builtins" or c.__module__.startswith(("mpc_jax.", "flax.")) for c in classes):
    return None
  try:  # classes by name, static attributes by value; 3x faster than repr
    described = hashlib.sha256(pickle.dumps(graphdef, protocol=5)).hexdigest()
  except Exception:  # noqa: BLE001 - an attribute pickle cannot write
    return None
  return f"{fn.__module__}.{fn.__qualname__}|{described}|{treedef}"


def program(fn, key, leaves, *args, quick: bool = False):
  """The compiled `(leaves, *args) -> fn(nnx.merge(graphdef, leaves), *args)` for `key = (graph
  definition, state treedef)`, one per structure, function and argument types in this process, and
  stored for later ones (`compile_cache.stored_program`). `quick`: compiled with less optimisation
  where that saves compile time at about the same speed (LLVM's -O1 on the CPU)."""
  types = _types(args)
  found = _PROGRAMS.get((key, fn, types, quick))
  if found is None:
    graphdef, treedef = key

    def run(leaves, *args):
      return fn(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), *args)

    options = QUICK_CPU_OPTIONS if quick and jax.default_backend() == "cpu" else None
    jitted = jax.jit(run, compiler_options=options)
    stored = _stored_key(graphdef, treedef, fn)
    if stored is not None and options:
      stored += f"|{sorted(options.items())}"
    found = _PROGRAMS[(key, fn, types, quick)] = compile_cache.stored_program(jitted, stored, leaves, *args)
  return found


def call_piece(fn, module, *args):
  """`fn(module, *args)` as a compiled program shared by every module of `module`'s structure.

  Only for modules that the call does not change (eval mode): their state is read once and kept."""
  entry = _SPLITS.get(id(module))
  if entry is None:
    graphdef, state = nnx.split(module)
    leaves, treedef = jax.tree.flatten(state)  # a list of arrays: no pytree walk per call
    entry = _SPLITS[id(module)] = ((graphdef, treedef), leaves, {})
    weakref.finalize(module, _SPLITS.pop, id(module), None)
  key, leaves, programs = entry
  types = _types(args)
  found = programs.get((fn, types))
  if found is None:
    found = programs[(fn, types)] = program(fn, key, leaves, *args, quick=True)
  return found(leaves, *args)
