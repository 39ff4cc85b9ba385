"""Every notebook in colabs/ runs top to bottom on the CPU as written (no weights, no uploads: the
notebook's own fallbacks). Shell (`!`) and magic (`%`) lines are skipped; the code cells run in order in
one namespace in a fresh folder."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "colabs").glob("*.ipynb"))


def code_cells(path):
  cells = json.loads(path.read_text())["cells"]
  for c in cells:
    if c["cell_type"] == "code":
      src = "".join(c["source"])
      yield "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("!", "%")))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
  import matplotlib

  matplotlib.use("Agg")
  monkeypatch.chdir(tmp_path)
  ns = {"__name__": "__main__"}
  for i, src in enumerate(code_cells(path)):
    exec(compile(src, f"{path.name}[cell {i}]", "exec"), ns)  # noqa: S102 - the notebook's own code
  if "results" in ns:  # the prediction notebook: a picture per readable image, the bad file reported
    ok = [r for r in ns["results"] if r["ok"]]
    bad = [r for r in ns["results"] if not r["ok"]]
    assert len(ok) == 2 and len(bad) == 1 and "not_an_image.jpg" in bad[0]["error"]
    for r in ok:
      assert (tmp_path / "predictions" / f"{r['stem']}_figure.png").stat().st_size > 0
