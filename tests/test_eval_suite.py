"""`mpc-jax eval --suite`: the paper's sets found under a data root in their public layouts, one table."""

import csv
import json

import numpy as np
import pytest

from mpc_jax import evaluate as E
from mpc_jax import suites

from fake_releases import make, oracle  # noqa: E402 (tests/ is on sys.path under pytest)

# suite name -> (fake layout, folder name under the data root, as the public release unpacks)
PRESENT = {
  "Columbia": ("columbia", "Columbia"),
  "DSO-1": ("dso1", "tifs-database"),
  "CASIAv1": ("casia_v1", "CASIAv1"),
  "NIST16": ("nist16", "NC2016_Test0613"),
  "Coverage": ("coverage", "COVERAGE"),
  "Korus": ("korus", "realistic-tampering-dataset"),
  "In-the-Wild": ("in_the_wild", "In-the-Wild"),
  "CoCoGlide": ("cocoglide", "CocoGlide"),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  counts = {}
  for k, (name, (layout, folder)) in enumerate(PRESENT.items()):
    counts[name] = len(make(layout, root / folder, seed=k))
  (root / "MISD").mkdir()  # present but empty: not the MISD layout -> footnote, not an error
  return root, counts


def test_paper_suite_one_table_and_footnote(data_root, tmp_path, monkeypatch, capsys):
  root, counts = data_root
  monkeypatch.setattr(E, "load_model_from_args", lambda args: oracle)
  out = tmp_path / "out"
  rc = E.cli_main(
    [
      "--random-init",
      "x",
      "--suite",
      "paper",
      "--data-root",
      str(root),
      "--out",
      str(out),
      "--protocol",
      "native",
      "--no-progress",
    ]
  )
  assert rc == 0
  js = json.loads((out / "suite_paper.json").read_text())
  rows = {r["dataset"]: r for r in js["rows"]}
  assert sorted(rows) == sorted(PRESENT)
  for name, n in counts.items():  # the oracle is perfect iff each layout and mask coding was read right
    assert rows[name]["n_forged"] == n == rows[name]["n_images"], name
    assert rows[name]["f1"] == 1.0 and rows[name]["iou"] == 1.0, (name, rows[name])
  assert js["mean"] == {"f1": 1.0, "iou": 1.0, "num_sets": len(PRESENT)}
  assert sorted(m["dataset"] for m in js["missing"]) == ["FF++", "MISD"]
  md = (out / "suite_paper.md").read_text()
  assert "| F1 |" in md and "| IoU |" in md and "Mean" in md and "Not evaluated (not found): " in md
  assert "MISD" in md.split("Not evaluated")[1] and "FF++" in md.split("Not evaluated")[1]
  printed = capsys.readouterr().out
  assert "## suite paper" in printed and "| F1 | 1.000 |" in printed
  table = list(csv.DictReader(open(out / "suite_paper.csv")))
  assert [r["dataset"] for r in table][: len(PRESENT)] == [
    n for n in [e["name"] for e in suites.PAPER] if n in PRESENT
  ]
  assert table[len(PRESENT)]["dataset"] == "Mean" and float(table[len(PRESENT)]["f1"]) == 1.0
  assert (out / "results.csv").exists()  # the per-set report of `eval` is written as well


def test_mean_and_user_suite_file(data_root, tmp_path, monkeypatch):
  root, _ = data_root

  def half(x):  # predicts the top half of every image: F1 / IoU known per set from the masks
    y = oracle(x)
    y[:, : y.shape[1] // 2] = 50.0
    y[:, y.shape[1] // 2 :] = -50.0
    return y

  user = tmp_path / "my_suites.py"
  user.write_text(
    "SUITES = {'two': [\n"
    "  {'name': 'A', 'spec': 'layout:dso1:{root}/tifs-database'},\n"
    "  {'name': 'B', 'dirs': ('COVERAGE',), 'layout': 'coverage'},\n"
    "  {'name': 'C', 'spec': '{root}/nowhere'}]}\n"
  )
  monkeypatch.setattr(E, "load_model_from_args", lambda args: half)
  out = tmp_path / "o"
  rc = E.cli_main(
    [
      "--random-init",
      "x",
      "--suite",
      f"{user}:two",
      "--data-root",
      str(root),
      "--out",
      str(out),
      "--protocol",
      "native",
      "--no-progress",
    ]
  )
  assert rc == 0
  js = json.loads((out / "suite_two.json").read_text())
  # fake masks (32 rows): image 0 band rows 8..16, image 1 rows 16..32; prediction rows 0..16
  f1 = [2 * 8 / (16 + 8), 0.0]
  iou = [8 / 16, 0.0]
  for r in js["rows"]:
    assert r["f1"] == pytest.approx(np.mean(f1)) and r["iou"] == pytest.approx(np.mean(iou))
  assert js["mean"]["f1"] == pytest.approx(np.mean(f1))
  assert [m["dataset"] for m in js["missing"]] == ["C"]


def test_bad_suite_is_a_usage_error(tmp_path):
  with pytest.raises(SystemExit) as e:
    E.cli_main(["--random-init", "x", "--suite", "nope"])
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:
    E.cli_main(["--random-init", "x"])
  assert e.value.code == 2
  bad = tmp_path / "s.py"
  bad.write_text("SUITES = {'x': [{'name': 'A'}]}\n")
  with pytest.raises(ValueError, match="needs 'spec', 'dirs' or 'tfds'"):
    suites.load_suite(str(bad))


def test_dataset_names_of_the_new_specs(tmp_path):
  assert E.dataset_name("arrayrecord:/x/packed")[0] == "packed"
  assert E.dataset_name("arrayrecord:/x/packed:CASIAv2")[0] == "CASIAv2"
  assert E.dataset_name("layout:nist16:/data/NC2016_Test0613/")[0] == "NC2016_Test0613"
