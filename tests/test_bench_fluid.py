"""The fluid benchmark runs end to end on a tiny grid and writes honest results."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("linsolve.problems.fluid")

from linsolve.benchmarks.fluid import main, run_sequence  # noqa: E402


def test_fluid_benchmark_tiny(tmp_path, capsys):
    rc = main(["--size", "12", "--frames", "2", "--fixed-frames", "2", "--out", str(tmp_path),
               "--methods", "scipy-cg,amg-rs,gmg-pcg,learned-pcg"])
    assert rc == 0
    with open(os.path.join(tmp_path, "fluid.json")) as handle:
        payload = json.load(handle)
    assert os.path.getsize(os.path.join(tmp_path, "fluid.png")) > 0
    runs = payload["results"]["runs"]
    assert [r["scene"] for r in runs] == ["moving_sphere", "smoke_sphere"]
    for run in runs:
        for method, records in run["methods"].items():
            assert len(records) == 2
            for rec in records:
                # Every reported solve really meets the tolerance on the true residual.
                assert rec["converged"] and rec["relres"] <= run["rtol"]
                assert rec["iterations"] >= 1 and rec["solve_s"] > 0
    moving, fixed = runs
    # A changes every frame of moving_sphere: preconditioners are rebuilt each frame;
    # smoke_sphere keeps A, so only the first frame pays the setup.
    assert all(r["setup_s"] > 0 for r in moving["methods"]["gmg-pcg"])
    assert fixed["methods"]["gmg-pcg"][1]["setup_s"] == 0.0
    acc = payload["results"]["acceptance"]
    assert "moving_twin_vs_best_amg_total" in acc and np.isfinite(acc["moving_twin_vs_best_amg_total"])
    assert "fluid benchmark" in capsys.readouterr().out


def test_run_sequence_rejects_unknown_scene():
    with pytest.raises(ValueError, match="scene"):
        run_sequence("no_such_scene", (12, 12, 12), 1, ["gmg-pcg"], 1e-6, progress=False)


def test_bad_method_name_exits():
    with pytest.raises(SystemExit):
        main(["--quick", "--methods", "gmg-pcg,nonsense", "--no-plots"])
