"""The command line: help everywhere, one-line errors with non-zero exit codes, real solves."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

import linsolve
from linsolve.cli import main

SUBCOMMANDS = ["demo", "solve", "bench", "train", "methods"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: linsolve" in capsys.readouterr().out


def test_console_script_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "linsolve")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in SUBCOMMANDS:
        assert command in out.stdout


def test_solve_file_and_write_solution(tmp_path, capsys):
    A = linsolve.problems.poisson((10, 10))
    scipy.io.mmwrite(str(tmp_path / "A.mtx"), A)
    b = np.arange(100.0)
    np.save(tmp_path / "b.npy", b)
    code = main(["solve", str(tmp_path / "A.mtx"), "--rhs", str(tmp_path / "b.npy"), "--method", "cg",
                 "--rtol", "1e-9", "--output", str(tmp_path / "x.npy")])
    out = capsys.readouterr().out
    assert code == 0 and "converged=True" in out
    x = np.load(tmp_path / "x.npy")
    assert np.linalg.norm(b - A @ x) <= 1e-9 * np.linalg.norm(b)


def test_solve_not_converged_exit_code(tmp_path, capsys):
    A = linsolve.problems.poisson((20, 20))
    scipy.io.mmwrite(str(tmp_path / "A.mtx"), A)
    code = main(["solve", str(tmp_path / "A.mtx"), "--method", "cg", "--maxiter", "2"])
    assert code == 1
    assert "converged=False" in capsys.readouterr().out


@pytest.mark.parametrize("argv,word", [
    (["solve", "/nonexistent/A.mtx"], "not found"),
    (["solve", "__FILE__", "--method", "nope"], "unknown method"),
    (["solve", "__FILE__", "--rhs", "/nonexistent.npy"], "not found"),
    (["solve", "__BAD__"], "cannot read"),
    (["bench", "nope"], "unknown benchmark"),
    (["demo", "--methods", "xyz", "--size", "8"], "unknown method"),
    (["solve", "__FILE__", "--rhs", "__BADRHS__"], "bad_rhs.txt"),        # names the file, not only NumPy's words
])
def test_bad_input_one_line_message(argv, word, tmp_path, capsys):
    scipy.io.mmwrite(str(tmp_path / "A.mtx"), linsolve.problems.poisson((4, 4)))
    (tmp_path / "bad.mtx").write_text("garbage\n")
    (tmp_path / "bad_rhs.txt").write_text("1 2\nx y\n")
    argv = [a.replace("__FILE__", str(tmp_path / "A.mtx")).replace("__BAD__", str(tmp_path / "bad.mtx"))
            .replace("__BADRHS__", str(tmp_path / "bad_rhs.txt")) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert word in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["solve", "x.mtx", "--rtol", "-1"], ["solve", "x.mtx", "--maxiter", "0"],
                                  ["demo", "--size", "abc"], ["frobnicate"],
                                  ["demo", "--rtol", "0"]])  # rtol 0 ran plain CG to 10 n with no output
def test_argument_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


@pytest.mark.parametrize("argv,word", [
    (["bench", "kernels", "--bogus"], "unrecognized arguments"),   # the benchmark's own parser: no usage block
    (["bench", "kernels", "--repeats", "0"], "positive integer"),
    (["bench", "cfd", "--frames", "-2"], "positive integer"),
    (["train", "poisson2d-64", "--epochs", "x"], "positive integer"),
    (["run"], "no script given"),
])
def test_option_errors_of_every_command_are_one_line(argv, word, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2
    assert word in err
    assert len(err.strip().splitlines()) == 1, err


def test_demo_small_runs_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "demo.png"
    code = main(["demo", "--size", "12", "--out", str(out), "--methods", "cg,amg-cg"])
    text = capsys.readouterr().out
    assert code == 0
    assert "cg" in text and "amg-cg" in text
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_dash_m_linsolve_is_the_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "linsolve", "methods"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "learned-pcg" in out.stdout


def test_run_puts_auto_cg_behind_scipy_for_an_unchanged_script(tmp_path, capsys):
    import scipy.sparse.linalg as sla

    script = tmp_path / "sim.py"
    script.write_text(
        "import sys, numpy as np, scipy.sparse.linalg as sla\n"
        "from scipy.sparse.linalg import cg as bound\n"
        "import linsolve\n"
        "A = -linsolve.problems.poisson((96, 96))\n"
        "x, info = sla.cg(A, -np.ones(A.shape[0]), rtol=1e-8)\n"
        "print(sla.cg.__name__, bound.__name__, info, sys.argv[1:])\n"
        "sys.exit(5)\n")
    original = sla.cg
    assert main(["run", str(script), "--steps", "3"]) == 5          # the script's own exit code
    assert capsys.readouterr().out.split() == ["auto_cg", "auto_cg", "0", "['--steps',", "'3']"]
    assert sla.cg is original                                        # restored afterwards
    assert main(["run", str(tmp_path / "missing.py")]) == 2


@pytest.mark.parametrize("body, status, shown", [
    ("raise ValueError('bad physical parameter')", 1, ["Traceback", "ValueError: bad physical parameter"]),
    ("import no_such_module_here", 1, ["Traceback", "no_such_module_here"]),
    ("import sys\nsys.exit('simulation diverged at step 12')", 1, ["simulation diverged at step 12"]),
    ("import sys\nsys.exit(None)", 0, [])])
def test_run_ends_like_python_on_the_scripts_own_errors(body, status, shown, tmp_path, capsys):
    """A script's own ValueError / ImportError was reported as linsolve's usage error (status 2, no
    traceback), and sys.exit("message") lost its message."""
    script = tmp_path / "sim.py"
    script.write_text(body + "\n")
    assert main(["run", str(script)]) == status
    err = capsys.readouterr().err
    assert all(word in err for word in shown) and "linsolve run: error" not in err


@pytest.mark.parametrize("config, word", [({"preset": "mg3d-quick", "epochs": -5}, "positive integer"),
                                          ({"preset": "mg3d-quick", "lr": "abc"}, "expected a number"),
                                          ({"preset": "mg3d-quick", "grid": 5}, "sizes >= 2")])
def test_train_config_values_are_checked_like_the_command_line(config, word, tmp_path, capsys):
    pytest.importorskip("torch")
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert word in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("extra, word", [(["--device", "bogus"], "train on the CPU"), (["--resume"], "no checkpoint"),
                                         (["--out", "__DIR__"], "is a directory"),
                                         (["--out", "/nonexistent-folder/m.safetensors"], "does not exist")])
def test_train_refuses_what_it_cannot_do_before_training(extra, word, tmp_path, capsys):
    pytest.importorskip("torch")
    extra = [e.replace("__DIR__", str(tmp_path)) for e in extra]
    if "--out" not in extra:
        extra += ["--out", str(tmp_path / "m.safetensors")]
    assert main(["train", "mg3d-quick", *extra]) == 2
    assert word in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_run_gives_the_script_an_absolute_file_and_lets_its_keyboard_interrupt_through(tmp_path, monkeypatch,
                                                                                   capsys):
    """python gives __main__ an absolute __file__ (a chdir keeps it valid); a KeyboardInterrupt of the script
    ends the process as python's does (traceback, SIGINT), not as linsolve's own 'interrupted', 130."""
    script = tmp_path / "sim.py"
    script.write_text("import os\nos.chdir('/')\nprint(os.path.exists(__file__), os.path.isabs(__file__))\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "sim.py"]) == 0
    assert capsys.readouterr().out.split() == ["True", "True"]
    script.write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        main(["run", str(script)])


def test_errors_name_the_subcommand_and_the_file_asked_for(tmp_path, capsys):
    scipy.io.mmwrite(str(tmp_path / "A.mtx"), linsolve.problems.poisson((4, 4)))
    matrix = str(tmp_path / "A.mtx")
    blocked = tmp_path / "file"
    blocked.write_text("")                       # a file where the output's folder should be
    cases = [(["solve", matrix, "--bogus"], "linsolve solve: error: unrecognized arguments: --bogus"),
             (["run", str(tmp_path)], "is a directory, not a Python script"),
             (["solve", matrix, "--output", str(blocked / "x.npy")], f"cannot write '{blocked / 'x.npy'}'")]
    for argv, words in cases:
        try:
            code = main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        err = capsys.readouterr().err
        assert code == 2 and words in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and ".tmp-" not in err
