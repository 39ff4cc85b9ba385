"""The in-repo fixtures are exact copies of `../shared/fixtures/`, their source, where it exists."""

import hashlib

import pytest

from conftest import FIXTURES, SHARED_FIXTURES


def _digest(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fixtures_are_in_the_repository():
  for name in ("parity_tiny.npz", "parity_tiny.json", "loss_cases.npz", "hrt_base_mpc_state_dict.tsv"):
    assert (FIXTURES / name).is_file(), f"tests/fixtures/{name} is missing"


def test_fixtures_match_their_shared_source():
  if not SHARED_FIXTURES.is_dir():
    pytest.skip(f"no shared source at {SHARED_FIXTURES} (normal outside the development machines)")
  shared = sorted(p.name for p in SHARED_FIXTURES.iterdir() if p.suffix in (".npz", ".json", ".tsv"))
  assert shared, SHARED_FIXTURES
  for name in shared:
    assert _digest(FIXTURES / name) == _digest(SHARED_FIXTURES / name), (
      f"tests/fixtures/{name} differs from {SHARED_FIXTURES / name}: copy it again"
    )


def test_planted_bugs_still_find_their_code():
  """Every mutant of `tests/tools/mutate.py` replaces a snippet that occurs exactly once: a refactor
  that moves the code must move the mutant too, or the planted bug would silently test nothing."""
  import importlib.util
  import pathlib
  import sys

  path = pathlib.Path(__file__).parent / "tools" / "mutate.py"
  spec = importlib.util.spec_from_file_location("mutate", path)
  mutate = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mutate  # dataclasses look their module up there
  spec.loader.exec_module(mutate)
  counts = mutate.snippet_counts()
  assert len(counts) >= 40
  assert {k: n for k, n in counts.items() if n != 1} == {}
