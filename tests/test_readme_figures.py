"""The README's figures are the results files': the generated parts of README.md (benchmark table,
demo result) equal what `bench/readme_tables.py` makes of bench/results/*.json today, and every
results file says when, at which commit, with which command and in which units it was measured."""

import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import readme_tables  # noqa: E402

RESULT_FILES = sorted((ROOT / "bench" / "results").glob("*.json"))


def test_readme_figures_match_results_files():
  text = readme_tables.README.read_text()
  regenerated = readme_tables.render(text)
  if regenerated != text:
    import difflib

    diff = "".join(
      difflib.unified_diff(text.splitlines(True), regenerated.splitlines(True), "README.md", "regenerated")
    )
    pytest.fail("README.md figures differ from bench/results (run python bench/readme_tables.py):\n" + diff)


def test_readme_benchmark_memory_is_in_gib():
  text = readme_tables.README.read_text()
  section = text[text.index("## Benchmarks") :]
  end = section.find("\n## ")
  if end > 0:
    section = section[:end]
  assert "GiB" in section
  other = re.findall(r"\d[\d.,]*\s*(?:[KMGT]B|MiB|KiB|TiB)\b", section)
  assert not other, f"memory figures not in GiB: {other}"


def test_render_rejects_an_unknown_or_missing_part():
  with pytest.raises(KeyError, match="unknown generated part"):
    readme_tables.render("<!-- begin generated: nope -->\nx\n<!-- end generated: nope -->")
  with pytest.raises(KeyError, match="no generated part"):
    readme_tables.render("no markers")


@pytest.mark.parametrize("path", RESULT_FILES, ids=[p.name for p in RESULT_FILES])
def test_results_file_records_provenance_and_units(path):
  d = json.loads(path.read_text())
  prov = d.get("provenance")
  assert isinstance(prov, dict), f"{path.name}: no provenance"
  if "note" not in prov:  # measured with provenance: all three, non-empty
    for k in ("date", "commit", "command"):
      assert prov.get(k), f"{path.name}: provenance.{k} missing"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d", prov["date"]), prov["date"]
  units = d.get("units")
  assert isinstance(units, dict) and units, f"{path.name}: no units"
  for r in d.get("rows", []) + d.get("runs", []):
    for k, v in r.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        assert k in units, f"{path.name}: no unit for {k!r}"
  for k, v in d.items():
    if isinstance(v, (int, float)) and not isinstance(v, bool) and "/" not in k:
      assert k in units, f"{path.name}: no unit for {k!r}"
