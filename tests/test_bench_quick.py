"""Every benchmark's ``--quick`` mode runs, writes parseable JSON and real PNG plots.

Each benchmark runs in a subprocess exactly as a user would start it
(``python bench/NAME.py --quick --out DIR``), so a broken script, a missing
plot or a crash at exit is caught, not just an exception in ``main``.
"""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = ("kernels", "poisson", "fluid", "cfd", "relax", "gpu", "dcdm")
#: --quick targets under a minute; the bound leaves room for a loaded, shared 2-core machine
QUICK_LIMIT_S = 180.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_quick(name, out_dir):
    assert os.path.isfile(os.path.join(ROOT, "linsolve", "benchmarks", f"{name}.py")), \
        f"linsolve/benchmarks/{name}.py is missing"
    script = os.path.join(ROOT, "bench", f"{name}.py")
    assert os.path.isfile(script), f"bench/{name}.py is missing"
    env = dict(os.environ, MPLBACKEND="Agg")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, script, "--quick", "--out", str(out_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, (f"bench/{name}.py --quick exited {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc, elapsed


def _check_outputs(name, out_dir, proc):
    path = os.path.join(out_dir, f"{name}.json")
    assert os.path.isfile(path), f"{name}: no {name}.json written"
    with open(path, encoding="utf-8") as fh:
        payload = json.load(fh)
    assert payload["benchmark"] == name
    machine = payload["machine"]
    for key in ("git_commit", "numpy", "scipy", "pyamg", "numba", "cpu_count", "threadpools", "date"):
        assert key in machine, f"{name}: machine info lacks {key!r}"
    assert payload["arguments"].get("quick") is True
    assert isinstance(payload["results"], dict) and payload["results"], f"{name}: empty results"
    pngs = [f for f in os.listdir(out_dir) if f.endswith(".png")]
    assert pngs, f"{name}: no PNG plot written"
    for f in pngs:
        with open(os.path.join(out_dir, f), "rb") as fh:
            head = fh.read()
        assert head.startswith(PNG_MAGIC) and len(head) > 2000, f"{name}: {f} is not a real PNG"
    assert proc.stdout.strip(), f"{name}: printed no table"
    return payload


@pytest.fixture(scope="module")
def poisson_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("poisson")
    proc, elapsed = _run_quick("poisson", out)
    return out, proc, elapsed


@pytest.mark.parametrize("name", [n for n in BENCHMARKS if n not in ("poisson", "cfd")])
def test_quick_mode(name, tmp_path):
    proc, elapsed = _run_quick(name, tmp_path)
    _check_outputs(name, tmp_path, proc)
    assert elapsed < QUICK_LIMIT_S, f"{name} --quick took {elapsed:.0f} s"


def test_poisson_quick(poisson_quick):
    out, proc, elapsed = poisson_quick
    payload = _check_outputs("poisson", out, proc)
    assert elapsed < QUICK_LIMIT_S, f"poisson --quick took {elapsed:.0f} s"
    results = payload["results"]
    for key in ("rtol", "sizes", "rows", "skipped", "histories", "plots", "notes"):
        assert key in results
    rows = results["rows"]
    by = {(r["size"], r["method"]): r for r in rows}
    for size in results["sizes"]:
        for method in ("scipy-cg", "cg", "ic-cg", "amg-sa", "amg-rs"):
            row = by[(size, method)]
            assert row["converged"] and row["rel_residual"] <= results["rtol"]
            for key in ("iterations", "setup_s", "solve_s", "total_s", "speedup_vs_scipy", "speedup_vs_best_amg"):
                assert row[key] is not None
            assert row["total_s"] >= row["setup_s"] >= 0
        # our CG and SciPy's take the same iterations; IC(0) and AMG need far fewer
        assert by[(size, "cg")]["iterations"] == by[(size, "scipy-cg")]["iterations"]
        assert by[(size, "ic-cg")]["iterations"] < 0.6 * by[(size, "cg")]["iterations"]
        assert by[(size, "amg-sa")]["iterations"] < by[(size, "ic-cg")]["iterations"]
        assert by[(size, "scipy-cg")]["speedup_vs_scipy"] == pytest.approx(1.0)
    for plot in ("poisson_residual_vs_iteration.png", "poisson_residual_vs_seconds.png",
                 "poisson_time_vs_size.png"):
        assert plot in results["plots"] and os.path.isfile(os.path.join(out, plot))
    # every method listed was either measured or skipped with a reason
    for method in results["methods"]:
        for size in results["sizes"]:
            assert (size, method) in by or any(
                s["method"] == method and s["size"] == size and s["reason"] for s in results["skipped"])
    hist = results["histories"]["ic-cg"]
    assert hist["residual"][0] == pytest.approx(1.0) and hist["residual"][-1] <= results["rtol"]
    assert len(hist["seconds"]) == len(hist["residual"])


def test_readme_results_from_quick_run(poisson_quick, tmp_path):
    from linsolve.benchmarks.readme_results import main, render_results, splice

    out, _, _ = poisson_quick
    text = render_results(str(out))
    assert text.startswith("## Results")
    assert "IC(0)-PCG" in text and "PyAMG SA-PCG" in text and "| grid | method |" in text
    assert "](bench/results/poisson_time_vs_size.png)" in text
    target = tmp_path / "RESULTS.md"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nstale\n<!-- results:end -->\nouttro\n", encoding="utf-8")
    assert main(["--results", str(out), "--out", str(target), "--readme", str(readme)]) == 0
    # The tables live once, in the results file, with image paths relative to it (they resolve).
    prefix = os.path.relpath(out, tmp_path).replace(os.sep, "/")
    assert target.read_text(encoding="utf-8") == render_results(str(out), figure_prefix=prefix)
    assert (tmp_path / prefix / "poisson_time_vs_size.png").exists()
    # The README gets the headline figure and a link to them, not the tables.
    spliced = readme.read_text(encoding="utf-8")
    assert "stale" not in spliced and spliced.startswith("intro") and "outtro" in spliced
    assert f"]({prefix}/poisson_time_vs_size.png)" in spliced and "](RESULTS.md)" in spliced
    assert "| grid | method |" not in spliced
    with pytest.raises(ValueError, match="markers"):
        splice("no markers here", text)


def test_poisson_rejects_bad_arguments(tmp_path):
    from linsolve.benchmarks.poisson import main

    with pytest.raises(SystemExit) as exc:
        main(["--quick", "--out", str(tmp_path), "--sizes", "8,x"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["--quick", "--out", str(tmp_path), "--methods", "nope"])
    assert not os.path.exists(tmp_path / "poisson.json")


def test_cli_dispatches_to_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "linsolve.cli", "bench", "poisson", "--quick", "--sizes", "8",
                           "--methods", "scipy-cg,ic-cg", "--no-plots", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "poisson.json", encoding="utf-8") as fh:
        rows = json.load(fh)["results"]["rows"]
    assert {r["method"] for r in rows} == {"scipy-cg", "ic-cg"}
    assert not list(tmp_path.glob("*.png"))


def test_readme_results_renders_other_benchmarks(tmp_path):
    """Nested rows / summaries / notes of the other benchmarks become Markdown, unreadable files say so."""
    from linsolve.benchmarks.readme_results import render_results

    payload = {"benchmark": "relax", "machine": {"cpu_count": 2, "git_commit": "abc"}, "arguments": {"quick": False},
               "results": {"settings": {"synthetic-low": {"rows": [{"method": "ChebCB", "kits": 234.5, "curve": [1]}]}},
                           "runs": [{"scene": "plume", "shape": [8, 8], "summary": {"cg": {"its": 40, "ok": True}}}],
                           "checks": [{"check": "ChebCB < Tsallis", "passed": False}],
                           "notes": "iterations are exact"}}
    (tmp_path / "relax.json").write_text(json.dumps(payload), encoding="utf-8")
    (tmp_path / "fluid.json").write_text("{not json", encoding="utf-8")
    text = render_results(str(tmp_path))
    assert text.index("### `fluid`") < text.index("### `relax`")  # the README's fixed order
    assert "| ChebCB | 234 |" in text and "curve" not in text
    assert "#### runs / plume 8×8 / summary" in text and "| cg | 40 | yes |" in text
    assert "| ChebCB < Tsallis | **no** |" in text
    assert "- iterations are exact" in text
    assert "unreadable result file" in text


def test_cfd_quick_reports_only_true_convergence(tmp_path):
    proc, elapsed = _run_quick("cfd", tmp_path)
    payload = _check_outputs("cfd", tmp_path, proc)
    assert elapsed < QUICK_LIMIT_S, f"cfd --quick took {elapsed:.0f} s"
    results = payload["results"]
    assert results["acceptance"]["every_reported_convergence_is_true"] is True
    kinds = {run["kind"] for run in results["runs"]}
    assert kinds == {"changing", "fixed", "trapped"}
    for run in results["runs"]:
        if run["kind"] == "trapped":
            for method in ("gmg-pcg", "learned-pcg"):
                rec = run["methods"][method]
                assert rec["converged"] and rec["relres"] <= run["rtol"]
                assert rec["inconsistent_b"]["honest"] and not rec["inconsistent_b"]["converged"]
            continue
        for method, recs in run["methods"].items():
            for rec in recs:
                assert rec["converged"] == (rec["relres"] <= run["rtol"])
                if method in ("gmg-pcg", "learned-pcg") and run["kind"] == "changing":
                    assert rec["iterations"] <= 15 and rec["iterations_random"] <= 15
