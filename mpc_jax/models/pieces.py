"""An eval-mode forward run as separately jitted pieces: one XLA program per distinct piece.

HRT-base repeats identical modules (four HRModules in stage 3, two in stage 4). Jitted whole, XLA
traces and compiles every copy; called piece by piece, modules of one structure share one traced
and compiled program (keyed by their graph definition and input shapes), so a new input size
compiles several times faster, and the persistent cache holds small programs that load quickly.
The values are the same as the whole program's.
"""

from __future__ import annotations

import weakref

import jax
from flax import nnx

# ((graph definition, state treedef), function) -> the jitted `(leaves, *args) -> fn(module, *args)`
_PROGRAMS: dict = {}
# id(module) -> ((graph definition, state treedef), state leaves, {function: program}), dropped with
# the module (by id: nnx.List is unhashable); valid while the module is not changed
_SPLITS: dict = {}


def apply(module, *args):
  """`module(*args)`: the function of a piece that is one whole module."""
  return module(*args)


def call_piece(fn, module, *args):
  """`fn(module, *args)` as a jitted program shared by every module of `module`'s structure.

  Only for modules that the call does not change (eval mode): their state is read once and kept."""
  entry = _SPLITS.get(id(module))
  if entry is None:
    graphdef, state = nnx.split(module)
    leaves, treedef = jax.tree.flatten(state)  # a list of arrays: no pytree walk per call
    entry = _SPLITS[id(module)] = ((graphdef, treedef), leaves, {})
    weakref.finalize(module, _SPLITS.pop, id(module), None)
  key, leaves, programs = entry
  program = programs.get(fn)
  if program is None:
    program = _PROGRAMS.get((key, fn))
    if program is None:
      graphdef, treedef = key

      def run(leaves, *args):
        return fn(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), *args)

      program = _PROGRAMS[(key, fn)] = jax.jit(run)
    programs[fn] = program
  return program(leaves, *args)
