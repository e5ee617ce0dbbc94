"""`pip install linsolve` without torch: everything but DCDM, models, training and the torch backend works.

A subprocess hides torch behind a meta-path finder (as if it were not installed) and runs the
package's main paths; what needs torch must say which extra to install.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import json, sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
import numpy as np
import scipy.sparse.linalg as sla
import linsolve

out = {}
def record(label, call):
    try:
        value = call()
        out[label] = ["ok", str(value)]
    except Exception as exc:
        out[label] = [type(exc).__name__, str(exc)]

A3 = linsolve.problems.poisson((24, 24, 24))
A2 = linsolve.problems.poisson((64, 64))
b3, b2 = np.ones(A3.shape[0]), np.ones(A2.shape[0])
record("cg", lambda: linsolve.cg(A2, b2, rtol=1e-8)[1])
record("auto-3d", lambda: linsolve.solve(A3, b3, rtol=1e-8).method)
record("auto-2d", lambda: linsolve.solve(A2, b2, rtol=1e-8).method)
record("amg-cg", lambda: linsolve.solve(A2, b2, method="amg-cg").converged)
record("ssor-cg", lambda: linsolve.solve(A2, b2, method="ssor-cg").converged)
record("auto_cg", lambda: linsolve.auto_cg(-A2, -b2)[1])
record("patch_scipy", lambda: linsolve.patch_scipy().__enter__() or sla.cg(-A2, -b2)[1])
record("sequence", lambda: linsolve.SequenceSolver().solve(A3, b3).method)
record("tuning", lambda: type(linsolve.tuning.make_tuner("chebcb", arms=[1.0, 1.5], context_range=(0, 1))).__name__)
record("models.available", lambda: len(linsolve.models.available()) > 0)
record("dcdm", lambda: linsolve.dcdm(A2, b2))
record("solve-dcdm", lambda: linsolve.solve(A2, b2, method="dcdm"))
record("precond.learned", lambda: linsolve.precond.learned(A2))
record("models.load", lambda: linsolve.models.load("poisson2d-64"))
record("learn.networks", lambda: __import__("linsolve.learn.networks"))
record("device", lambda: linsolve.solve(A2, b2, device="cuda"))
from linsolve.cli import main
record("cli-train", lambda: main(["train", "poisson2d-64"]))
out["torch_loaded"] = ["ok", str(any(m == "torch" or m.startswith("torch.") for m in sys.modules))]
print(json.dumps(out))
'''


def _run():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_everything_but_the_torch_features_works_without_torch():
    out = _run()
    assert out["torch_loaded"] == ["ok", "False"]
    assert out["cg"] == ["ok", "0"]
    assert out["auto-3d"] == ["ok", "learned-pcg"]        # the learned multigrid reads its weights with NumPy
    assert out["auto-2d"] == ["ok", "learned-pcg"]        # a 2D model ships too
    for label in ("amg-cg", "ssor-cg", "models.available"):
        assert out[label] == ["ok", "True"], (label, out[label])
    assert out["auto_cg"] == ["ok", "0"] and out["patch_scipy"] == ["ok", "0"]
    assert out["sequence"] == ["ok", "learned-pcg"] and out["tuning"] == ["ok", "ChebCB"]
    for label in ("dcdm", "solve-dcdm", "precond.learned", "models.load", "learn.networks", "device"):
        kind, message = out[label]
        assert kind == "ImportError" and "linsolve[torch]" in message, (label, out[label])
    assert out["cli-train"] == ["ok", "2"]                 # one-line error, exit code 2
