"""Generate the tutorial notebooks from the cell sources below (review this file, not the JSON).

Run ``python notebooks/make_notebooks.py`` after editing; it rewrites
``notebooks/0*.ipynb`` without outputs. ``tests/test_notebooks.py`` executes
every notebook top to bottom (each must finish in under 3 minutes; together
they aim for about one).
"""
from __future__ import annotations

import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text):
    return ("md", text)


def code(text):
    return ("code", text)


QUICKSTART = [
    md("""# 01 · Quickstart: linsolve as a drop-in for `scipy.sparse.linalg.cg`

`linsolve.cg` takes the same arguments and returns the same `(x, info)` as SciPy's `cg`,
with one stricter promise: `info == 0` only when the **true** residual
`‖b − A x‖ ≤ max(rtol‖b‖, atol)` has been checked on the returned `x`.
`linsolve.solve` is the rich entry point: the same solve by any registered method, returning
iterations, residual history and timings."""),
    code("""import time

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse.linalg as sla

import linsolve

print("linsolve", linsolve.__version__)"""),
    md("## A 3D Poisson problem (7-point Laplacian on a 24³ grid, CSR)"),
    code("""shape = (24, 24, 24)
A = linsolve.problems.poisson(shape)
rng = np.random.default_rng(0)
b = rng.standard_normal(A.shape[0])
print(f"n = {A.shape[0]}, nnz = {A.nnz}, format = {A.format}")"""),
    md("""## Same call, same answer
Swap `scipy.sparse.linalg.cg` for `linsolve.cg`: the iterates are the same, so the iteration
counts match."""),
    code("""def recorder():
    history = []
    return history, lambda xk: history.append(np.linalg.norm(b - A @ xk) / np.linalg.norm(b))

scipy_hist, cb = recorder()
x_scipy, info_scipy = sla.cg(A, b, rtol=1e-8, callback=cb)
our_hist, cb = recorder()
x, info = linsolve.cg(A, b, rtol=1e-8, callback=cb)

print(f"SciPy:    info={info_scipy}, iterations={len(scipy_hist)}")
print(f"linsolve: info={info}, iterations={len(our_hist)}")
print("relative difference of the solutions:", np.linalg.norm(x - x_scipy) / np.linalg.norm(x_scipy))
assert len(our_hist) == len(scipy_hist)
assert np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)"""),
    md("""## The rich entry point
`linsolve.solve` returns a `SolveResult`: `converged`, `iterations`, `residual_norms` (initial one
first), `method` (the one actually used), `time_s`, `setup_time_s`."""),
    code("""res = linsolve.solve(A, b, method="cg", rtol=1e-8)
print(res)
print("iterations:", res.iterations, " true relative residual:", f"{res.relative_residual:.2e}")"""),
    md("""## Preconditioners are LinearOperators
Each of these can be passed as `M` to `linsolve.cg` (or to SciPy's `cg`); the learned one,
`linsolve.precond.learned`, is not symmetric and goes to `linsolve.dcdm` instead. IC(0), incomplete
Cholesky without fill-in, is the classical baseline of the DCDM paper; PyAMG's V-cycle is the
strong CPU baseline."""),
    code("""for name, make in [("IC(0)", lambda: linsolve.precond.ic0(A)),
                   ("SSOR", lambda: linsolve.precond.ssor(A, omega=1.5)),
                   ("PyAMG SA", lambda: linsolve.precond.amg(A, kind="sa"))]:
    t0 = time.perf_counter()
    M = make()
    setup = time.perf_counter() - t0
    hist, cb = recorder()
    t0 = time.perf_counter()
    x, info = linsolve.cg(A, b, rtol=1e-8, M=M, callback=cb)
    solve_s = time.perf_counter() - t0
    print(f"{name:9s} info={info} iterations={len(hist):4d} setup {setup:.3f} s  solve {solve_s:.3f} s")"""),
    md("""## Every method by name
`linsolve.available_methods()` lists what this installation offers; learned methods appear when
their models are installed."""),
    code("""available = linsolve.available_methods()
candidates = ["cg", "ssor-cg", "ic-cg", "amg-cg", "gmg-pcg", "learned-pcg", "dcdm"]
results = {}
for method in candidates:
    if method not in available:
        print(f"{method:12s} not in this installation")
        continue
    # grid methods need the grid the unknowns live on (C order)
    options = {"grid_shape": shape} if method in ("dcdm", "learned-pcg", "gmg-pcg") else {}
    try:
        results[method] = linsolve.solve(A, b, method=method, rtol=1e-8, **options)
    except (ValueError, TypeError) as exc:
        print(f"{method:12s} skipped: {exc}")

print(f"{'method':14s} {'iters':>6s} {'setup s':>8s} {'total s':>8s} {'rel. residual':>14s}")
for method, r in results.items():
    print(f"{r.method:14s} {r.iterations:6d} {r.setup_time_s:8.3f} {r.time_s:8.3f} {r.relative_residual:14.2e}")
assert all(r.converged for r in results.values())"""),
    code("""fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for method, r in results.items():
    rel = np.asarray(r.residual_norms) / np.linalg.norm(b)
    axes[0].semilogy(rel, label=r.method)
axes[0].set(xlabel="iteration", ylabel="residual / ‖b‖", title="convergence")
axes[0].legend()
names = list(results)
axes[1].bar(names, [results[m].setup_time_s for m in names], label="setup")
axes[1].bar(names, [results[m].time_s - results[m].setup_time_s for m in names],
            bottom=[results[m].setup_time_s for m in names], label="solve")
axes[1].set(ylabel="seconds", title="time (one solve, this machine)")
axes[1].legend()
plt.setp(axes[1].get_xticklabels(), rotation=30)
plt.tight_layout()"""),
    md("""## Honest results
Too few iterations give `info > 0` and `converged == False`; bad input raises a clear error
instead of crashing inside a kernel."""),
    code("""x, info = linsolve.cg(A, b, rtol=1e-12, maxiter=10)
print("info =", info)
res = linsolve.solve(A, b, method="cg", rtol=1e-12, maxiter=10)
print(res.converged, res.message)
assert info == 10 and not res.converged

try:
    linsolve.cg(A, b[:-1])
except ValueError as exc:
    print("ValueError:", exc)"""),
]

SIMULATION = [
    md("""# 02 · A simulation loop: pressure solves with `SequenceSolver`

An incompressible smoke simulation solves one pressure Poisson system per frame. Consecutive
systems are alike, so a solver that **warm-starts** from the previous pressure and **tunes** its
parameter online (here the SSOR ω of SSOR-PCG, by the ChebCB contextual bandit) pays less per
frame. `linsolve.problems.fluid_sequence` runs the simulation and hands every frame's system to
the solver you give it."""),
    code("""import time

import matplotlib.pyplot as plt
import numpy as np

import linsolve
from linsolve.problems import fluid_sequence
from linsolve.problems.render import frame_slice, render_frame

shape, frames, scene = (48, 64), 40, "moving_sphere"   # 2D keeps this notebook fast"""),
    md("""## Baseline: plain CG, warm-started from the previous frame
Both runs solve to the same true relative residual, `rtol = 1e-6`."""),
    code("""rtol = 1e-6
t0 = time.perf_counter()
baseline = list(fluid_sequence(shape, frames, scene=scene, seed=0, solver="cg", rtol=rtol))
print(f"{frames} frames in {time.perf_counter() - t0:.1f} s")
base_its = np.array([f.extras["solve"]["iterations"] for f in baseline])
base_sec = np.array([f.extras["solve"]["time_s"] for f in baseline])
print("CG iterations per frame:", base_its[:10], "...")"""),
    md("## The plugin: SSOR-PCG with ω tuned online, warm start"),
    code("""solver = linsolve.SequenceSolver(method="ssor-cg", tuner="chebcb", rtol=rtol, warm_start=True)
t0 = time.perf_counter()
tuned = list(fluid_sequence(shape, frames, scene=scene, seed=0, solver=solver))
print(f"{frames} frames in {time.perf_counter() - t0:.1f} s")
tuned_its = np.array([f.extras["solve"]["iterations"] for f in tuned])
tuned_sec = np.array([f.extras["solve"]["time_s"] for f in tuned])
print("SSOR-PCG iterations per frame:", tuned_its[:10], "...")
print("total iterations: CG", base_its.sum(), " tuned SSOR-PCG", tuned_its.sum())
assert all(f.extras["solve"]["converged"] for f in tuned)
# what the projection leaves is minus the residual: max|div u| <= ||b - A p|| <= rtol ||b||
assert all(f.extras["divergence_after"] <= rtol * np.linalg.norm(f.b) * (1 + 1e-9) for f in tuned)"""),
    md("""`solver.stats` has one entry per call: iterations, seconds, the ω the tuner chose, the
context it saw, whether the warm start was used."""),
    code("""stats = solver.stats
print({k: stats[-1][k] for k in ("call", "iterations", "param_name", "param", "context", "warm_start", "converged")})
omegas = np.array([s["param"] for s in stats])
contexts = np.array([s["context"] if s["context"] is not None else np.nan for s in stats])"""),
    code("""fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
axes[0].plot(base_its, label="CG (warm start)")
axes[0].plot(tuned_its, label="SSOR-PCG, ω tuned by ChebCB")
axes[0].set(xlabel="frame", ylabel="iterations", title="iterations per frame")
axes[0].legend()
axes[1].plot(np.cumsum(base_sec), label="CG (warm start)")
axes[1].plot(np.cumsum(tuned_sec), label="SSOR-PCG, ω tuned")
axes[1].set(xlabel="frame", ylabel="cumulative solve seconds", title="cumulative cost")
axes[1].legend()
axes[2].scatter(contexts, omegas, c=np.arange(len(omegas)), cmap="viridis", s=14)
axes[2].set(xlabel="context (sphere position)", ylabel="ω chosen", title="the tuner's choices (colour: frame)")
plt.tight_layout()"""),
    md("""Read the plots honestly: SSOR-PCG needs several times fewer iterations, but its first frame
also pays for loading the compiled numba kernels (once per process), and an SSOR sweep costs about
two matrix-vector products, so compare the *slopes* of the cumulative cost. The saving comes from
SSOR and its tuned ω, not from the warm start: with the sphere moving, the previous pressure is a
worse start than zero on most frames here (its residual exceeds ‖b‖), so the plugin takes it on
very few (`warm_start` in the stats), and the warm-started CG baseline gains about 1.5 % from it.
Forty frames are short for a bandit: its ω choices are still exploring (notebook 03 runs long
sequences)."""),
    md("""## The default plugin: `SequenceSolver()` finds the grid and runs multigrid
With no arguments the plugin is `method="auto"`: it reads the grid off the matrix
(`linsolve.find_grid`: the couplings at distances 1 and 64 say "a 48×64 grid"), takes the
multigrid-preconditioned CG path that `linsolve.solve` would take, and keeps the V-cycle while the
matrix is unchanged (here the sphere moves every frame, so it is rebuilt every frame: a few ms)."""),
    code("""print(linsolve.find_grid(baseline[0].A))
auto = linsolve.SequenceSolver(rtol=rtol)          # method="auto", no tuner
t0 = time.perf_counter()
auto_frames = list(fluid_sequence(shape, frames, scene=scene, seed=0, solver=auto))
print(f"{frames} frames in {time.perf_counter() - t0:.1f} s; methods used:", {s["method"] for s in auto.stats},
      "; preconditioners built:", auto.setups)
auto_its = np.array([f.extras["solve"]["iterations"] for f in auto_frames])
auto_sec = np.array([f.extras["solve"]["time_s"] for f in auto_frames])
assert all(f.extras["solve"]["converged"] for f in auto_frames)
print("iterations per frame:", auto_its[:10], "...  total:", auto_its.sum(), "(CG:", base_its.sum(), ")")"""),
    md("""## In 3D: the learned multigrid V-cycle in the loop
On a 3D grid `auto` picks `learned-pcg`: the geometric V-cycle whose per-cell relaxation weights
come from the shipped `mg-fluid3d` model (a function of each cell's 3×3×3 neighbourhood of
fluid / solid / air). Same smoke, a 24³ box, the sphere moving every frame."""),
    code("""shape3, frames3 = (24, 24, 24), 8
cg3 = list(fluid_sequence(shape3, frames3, scene=scene, seed=0, solver="cg", rtol=rtol))
loop = linsolve.SequenceSolver(rtol=rtol)
learned3 = list(fluid_sequence(shape3, frames3, scene=scene, seed=0, solver=loop))
print("methods used:", {s["method"] for s in loop.stats})
assert all(s["method"] == "learned-pcg" and s["converged"] for s in loop.stats)
its3 = {name: np.array([f.extras["solve"]["iterations"] for f in run]) for name, run in
        (("CG", cg3), ("learned multigrid PCG", learned3))}
sec3 = {name: np.array([f.extras["solve"]["time_s"] for f in run]) for name, run in
        (("CG", cg3), ("learned multigrid PCG", learned3))}
for name in its3:
    print(f"{name:>22}: iterations {its3[name]}, total {1e3 * sec3[name].sum():.0f} ms")"""),
    code("""fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
axes[0].plot(base_its, label="CG (warm start)")
axes[0].plot(auto_its, label="SequenceSolver() = multigrid PCG")
axes[0].set(xlabel="frame", ylabel="iterations", title="2D: iterations per frame", yscale="log")
axes[0].legend()
for name in its3:
    axes[1].plot(its3[name], marker="o", label=name)
    axes[2].plot(np.cumsum(sec3[name]), marker="o", label=name)
axes[1].set(xlabel="frame", ylabel="iterations", title="3D 24³: iterations per frame", yscale="log")
axes[2].set(xlabel="frame", ylabel="cumulative solve seconds", title="3D 24³: cumulative cost")
axes[1].legend()
axes[2].legend()
plt.tight_layout()"""),
    md("## Pictures of the smoke"),
    code("""render_frame(tuned[-1], fields=("density", "pressure"))  # a matplotlib Figure displays itself"""),
    code("""picks = np.linspace(0, frames - 1, 5).astype(int)
fig, axes = plt.subplots(1, len(picks), figsize=(13, 3.6))
for ax, k in zip(axes, picks):
    ax.imshow(frame_slice(tuned[k], "density"), origin="lower", cmap="magma")
    solid = frame_slice(tuned[k], "cell_types") == linsolve.problems.SOLID
    ax.imshow(np.ma.masked_where(~solid, solid), origin="lower", cmap="Greys", vmin=0, vmax=1.5)
    ax.set_title(f"frame {k}")
    ax.axis("off")
plt.tight_layout()"""),
]

RELAX = [
    md("""# 03 · Learning to relax: tuning SOR's ω online

*Learning to Relax* (Khodak et al., ICLR 2024) picks the SOR relaxation ω for each system of a
sequence from the cost (iterations) of the previous solves. Here: the paper's synthetic setting,
`A_t = A + c_t I` with `A` the 5-point Laplacian on a 10×10 grid and a random shift `c_t` that
the contextual tuners see. Because SOR from `x0 = 0` is deterministic, we first tabulate the
iterations of every arm on every instance; the tuners then play against that table, so regret
against the best fixed ω and the instance-optimal ω is exact."""),
    code("""import time

import matplotlib.pyplot as plt
import numpy as np

import linsolve
from linsolve.tuning import BinnedTsallisINF, ChebCB, TsallisINF

T = 300
seq = linsolve.problems.shifted_laplacian_sequence(10, T, variance="high", seed=0)
arms = np.linspace(1.0, 1.95, 20)
instances = list(seq)
print(len(instances), "instances, n =", instances[0].A.shape[0], ", contexts in", seq.context_range)"""),
    code("""def sor_iterations(inst, omega):
    res = linsolve.solve(inst.A, inst.b, method="sor", omega=float(omega), rtol=1e-8, maxiter=10_000)
    return res.iterations if res.converged else 10_000

t0 = time.perf_counter()
cost = np.array([[sor_iterations(inst, w) for w in arms] for inst in instances])
print(f"cost table {cost.shape} in {time.perf_counter() - t0:.1f} s")
contexts = np.array([inst.context for inst in instances])"""),
    code("""def play(tuner, contextual):
    costs = []
    for t, inst in enumerate(instances):
        omega = tuner.suggest(inst.context if contextual else None)
        i = int(np.argmin(np.abs(arms - omega)))
        costs.append(cost[t, i])
        tuner.observe(cost[t, i])
    return np.array(costs)

curves = {
    "ω = 1 (Gauss-Seidel)": cost[:, 0],
    "best fixed ω (hindsight)": cost[:, np.argmin(cost.sum(axis=0))],
    "instance-optimal ω": cost.min(axis=1),
    "Tsallis-INF": play(TsallisINF(arms, seed=0), False),
    "binned Tsallis-INF": play(BinnedTsallisINF(arms, seq.context_range, bins=5, seed=0), True),
    "ChebCB": play(ChebCB(arms, seq.context_range, degree=5, seed=0), True),
}
print(f"{'strategy':26s} {'total SOR iterations':>22s}")
for name, c in curves.items():
    print(f"{name:26s} {int(c.sum()):22d}")
totals = {name: c.sum() for name, c in curves.items()}
assert totals["instance-optimal ω"] <= totals["best fixed ω (hindsight)"] <= totals["ω = 1 (Gauss-Seidel)"]"""),
    code("""best_fixed = np.cumsum(curves["best fixed ω (hindsight)"])
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, c in curves.items():
    axes[0].plot(np.cumsum(c), label=name)
    if name not in ("ω = 1 (Gauss-Seidel)",):
        axes[1].plot(np.cumsum(c) - best_fixed, label=name)
axes[0].set(xlabel="instance t", ylabel="cumulative iterations", title="cumulative cost")
axes[0].legend(fontsize=8)
axes[1].axhline(0, color="k", lw=0.8)
axes[1].set(xlabel="instance t", ylabel="regret vs best fixed ω (iterations)", title="regret")
axes[1].legend(fontsize=8)
plt.tight_layout()"""),
    md("""## Which ω is best depends on the context
The instance-optimal ω moves with the shift `c_t`; this is what a contextual tuner exploits."""),
    code("""fig, ax = plt.subplots(figsize=(6, 4))
ax.scatter(contexts, arms[cost.argmin(axis=1)], s=8, label="instance-optimal arm")
young = [inst.extras["omega_opt"] for inst in instances] if instances[0].extras else None
if young:
    order = np.argsort(contexts)
    ax.plot(contexts[order], np.asarray(young)[order], "k-", lw=1, label="Young's ω*(c)")
ax.set(xlabel="context c_t (diagonal shift)", ylabel="ω")
ax.legend()
plt.show()"""),
]

TRAIN = [
    md("""# 04 · Training a small DCDM model end to end

The Deep Conjugate Direction Method (Kaneda et al., ICML 2023) replaces CG's search direction
by a network's guess of `A⁻¹ r`, trained on Ritz vectors of the matrix with the loss
`‖b − A x̂‖²`. This notebook trains a **tiny** 2D model for a few epochs (about half a minute on
a laptop CPU), saves it safely (safetensors, no pickle), loads it back and solves with it.
Real models are trained with `linsolve train PRESET` (see `linsolve train --help`)."""),
    code("""import os
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np

import linsolve
from linsolve.learn.train import TrainConfig, train

workdir = tempfile.mkdtemp(prefix="linsolve-nb04-")
config = TrainConfig(
    grid_shape=(24, 24), n_lanczos=120, n_samples=300, epochs=6, batch_size=10, lr=1e-3,
    net_config={"dims": 2, "channels": 8, "n_down": 2, "n_coarse": 2, "n_up": 2},
    out=os.path.join(workdir, "tiny_dcdm.safetensors"), progress=False, seed=0,
    threads=1)  # a tiny network gains nothing from more threads, and a busy machine loses a lot
config"""),
    code("""t0 = time.perf_counter()
net, log = train(config)
print(f"trained {len(log)} epochs in {time.perf_counter() - t0:.1f} s; loss {log[0]:.3g} -> {log[-1]:.3g}")
assert all(np.isfinite(log))"""),
    code("""fig, ax = plt.subplots(figsize=(5, 3.5))
ax.semilogy(np.arange(1, len(log) + 1), log, marker="o")
ax.set(xlabel="epoch", ylabel="training loss  mean ‖b − A x̂‖²", title="DCDM training")
plt.show()"""),
    md("## Load it back (safe format, metadata included) and solve"),
    code("""model = linsolve.models.load(config.out)
A = linsolve.problems.poisson(config.grid_shape)
rng = np.random.default_rng(1)
b = rng.standard_normal(A.shape[0])

x, info = linsolve.dcdm(A, b, rtol=1e-6, model=config.out, maxiter=400)
print("DCDM info:", info, " true relative residual:", np.linalg.norm(b - A @ x) / np.linalg.norm(b))
res_dcdm = linsolve.solve(A, b, method="dcdm", rtol=1e-6, model=config.out, maxiter=400)
res_cg = linsolve.solve(A, b, method="cg", rtol=1e-6)
print(res_dcdm)
print(res_cg)
assert res_dcdm.converged == (res_dcdm.relative_residual <= 1e-6)"""),
    code("""fig, ax = plt.subplots(figsize=(6, 4))
for r in (res_cg, res_dcdm):
    ax.semilogy(np.asarray(r.residual_norms) / np.linalg.norm(b), label=f"{r.method} ({r.iterations} its)")
ax.set(xlabel="iteration", ylabel="residual / ‖b‖", title=f"{config.grid_shape} Poisson, tiny model")
ax.legend()
plt.show()"""),
    md("""A few epochs on a tiny network already give useful search directions; the shipped models
(`linsolve.models.available()`) are trained longer on larger grids.

## Deflation: the part a network cannot learn

A network sees a fixed number of cells around each cell, so the global, smooth part of the error
of a large domain with walls escapes it. By default `dcdm` also makes each direction A-orthogonal
to a coarse space of 4×4(×4)-cell aggregates (`deflation="auto"`); `deflation=None` is the paper's
method. Compare both with the shipped 2D model on a smoke-simulation pressure solve:"""),
    code("""import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the generator's own solves are not the point here
    frame = list(linsolve.problems.fluid_sequence((128, 128), 3, scene="smoke_plume", seed=0))[-1]
for deflation in (None, "auto"):
    r = linsolve.solve(frame.A, frame.b, method="dcdm", rtol=1e-6, grid_shape=frame.grid_shape,
                       cell_types=frame.cell_types, deflation=deflation)
    print(f"deflation={deflation!s:5}: {r.iterations:4d} iterations, converged={r.converged}, "
          f"coarse unknowns={r.extras['deflation_coarse_size']}")"""),
    code("""import shutil

print("shipped models:", linsolve.models.available())
shutil.rmtree(workdir, ignore_errors=True)  # the tiny model was only for this tutorial"""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_simulation_loop.ipynb": SIMULATION,
    "03_learning_to_relax.ipynb": RELAX,
    "04_train_dcdm.ipynb": TRAIN,
}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, text) in enumerate(cells):
        cell = new_markdown_cell(text) if kind == "md" else new_code_cell(text)
        cell["id"] = f"cell-{i:02d}"  # stable ids keep diffs small
        nb.cells.append(cell)
    return nb


def main(argv=None) -> int:
    from linsolve._io import atomic_write_text

    names = list(argv if argv is not None else sys.argv[1:]) or list(NOTEBOOKS)
    for name in names:
        if name not in NOTEBOOKS:
            print(f"unknown notebook {name!r}; choose from {list(NOTEBOOKS)}", file=sys.stderr)
            return 2
        path = os.path.join(HERE, name)
        nb = build(NOTEBOOKS[name])
        nbformat.validate(nb)
        atomic_write_text(path, nbformat.writes(nb) + "\n")
        print("written", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
