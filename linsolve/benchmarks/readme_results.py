"""Generate the README "Results" section from ``bench/results/*.json`` (never by hand).

``python bench/readme_results.py`` writes ``docs/RESULTS.md``, the one place the
generated tables live: one table per benchmark result file found, the machine
it ran on, and one figure, with image paths relative to the file written. With
``--readme README.md`` the README's section between the markers
``<!-- results:start -->`` and ``<!-- results:end -->`` gets the headline only:
the figure and a link to the tables (the README stays short; hand-written
headline tables go above the markers).

Benchmarks other than ``poisson`` are rendered generically: wherever a dict in
``results`` (searched three levels deep) holds a ``rows`` list of flat dicts it
becomes a Markdown table (scalar columns only), otherwise a preformatted
``table`` string is shown as is; ``acceptance`` / ``checks`` / ``summary``
entries are listed too, and ``notes`` become bullets.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

__all__ = ["main", "render_results", "render_headline", "markdown_table", "FIGURE"]

START, END = "<!-- results:start -->", "<!-- results:end -->"
#: The one figure the README shows (first that exists).
FIGURE = ("poisson_time_vs_size.png", "poisson_residual_vs_seconds.png")
#: Benchmarks listed first, in this order; any other result file follows alphabetically.
ORDER = ("poisson", "cfd", "fluid", "relax", "kernels", "dcdm", "gpu")
_MAX_ROWS = 60


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if value == 0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3g}"
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows, columns, headers=None, left=0) -> str:
    """Markdown table of ``rows`` (dicts) restricted to ``columns``; the first ``left`` left-aligned.

    Examples
    --------
    >>> print(markdown_table([{"a": 1, "b": 0.5}], ["a", "b"], ["A", "B"]))
    | A | B |
    |---:|---:|
    | 1 | 0.5 |
    """
    headers = headers or columns
    align = "|".join(":---" if i < left else "---:" for i in range(len(columns)))
    lines = ["| " + " | ".join(headers) + " |", "|" + align + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _machine_line(machine: dict) -> str:
    pools = machine.get("threadpools") or []
    threads = ", ".join(f"{p.get('internal_api')} {p.get('num_threads')}" for p in pools if p.get("internal_api"))
    parts = [f"{machine.get('cpu_count', '?')} CPUs ({machine.get('processor', '?')})",
             f"Python {machine.get('python', '?')}", f"NumPy {machine.get('numpy', '?')}",
             f"SciPy {machine.get('scipy', '?')}", f"PyAMG {machine.get('pyamg', '?')}",
             f"numba {machine.get('numba', '?')} ({machine.get('numba_threads', '?')} threads)"]
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']} ({machine.get('torch_threads', '?')} threads)")
    if threads:
        parts.append(f"BLAS/OpenMP threads: {threads}")
    parts.append(f"commit `{str(machine.get('git_commit', '?'))[:12]}`, {machine.get('date', '?')}")
    return "; ".join(parts)


def _poisson_section(results: dict) -> list[str]:
    rows = results.get("rows", [])
    out = [f"Iterations to a true relative residual of {results.get('rtol', 1e-6):g}, setup and solve "
           "seconds (medians after a warm-up run), the checked relative residual, and speedups in total "
           "time against SciPy CG and against the better of PyAMG SA/RS, measured side by side.", ""]
    columns = ["grid", "label", "iterations", "setup_s", "solve_s", "total_s", "rel_residual",
               "speedup_vs_scipy", "speedup_vs_best_amg"]
    headers = ["grid", "method", "iters", "setup s", "solve s", "total s", "‖b−Ax‖/‖b‖",
               "× SciPy CG", "× best PyAMG"]
    shown = []
    for r in rows:
        r = dict(r)
        if not r.get("converged", True):
            r["iterations"] = f"{r.get('iterations')} (not converged)"
        shown.append(r)
    for r in shown:
        r["grid"] = f"{r.get('size')}³" if r.get("size") is not None else r.get("grid")
    out.append(markdown_table(shown, columns, headers, left=2))
    skipped = results.get("skipped") or []
    reasons = {}
    for s in skipped:
        reason = re.sub(r"^\w+Error: ", "", str(s.get("reason", "")))[:90]
        reasons.setdefault((s.get("method"), reason), []).append(s.get("size"))
    if reasons:
        out += ["", "Not measured: " + "; ".join(
            f"{method} at {', '.join(f'{v}³' for v in sizes)} ({reason})"
            for (method, reason), sizes in reasons.items()) + "."]
    return out


_SUMMARY_KEYS = ("acceptance", "checks", "verdict", "summary", "goals")
_SCALAR = (int, float, str, bool, type(None))


def _flat_rows(value) -> bool:
    return (isinstance(value, list) and 0 < len(value) and all(isinstance(r, dict) for r in value)
            and any(isinstance(v, _SCALAR) for v in value[0].values()))


def _rows_table(rows) -> list[str]:
    columns = []
    for r in rows:
        for k, v in r.items():
            if k not in columns and isinstance(v, _SCALAR):
                columns.append(k)
    text = [markdown_table(rows[:_MAX_ROWS], columns[:10], left=1)]
    if len(rows) > _MAX_ROWS:
        text.append(f"\n({len(rows) - _MAX_ROWS} more rows in the JSON file.)")
    return text


def _label(item: dict, index: int) -> str:
    parts = []
    for key in ("name", "setting", "scene", "problem", "shape", "grid"):
        value = item.get(key)
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            parts.append("×".join(map(str, value)))
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            parts.append(str(value))
    return " ".join(parts[:2]) if parts else str(index)


def _dict_of_rows(value) -> bool:
    return (isinstance(value, dict) and 0 < len(value) <= _MAX_ROWS
            and all(isinstance(v, dict) and v and all(isinstance(x, _SCALAR) for x in v.values())
                    for v in value.values()))


def _collect(obj, title: str, out: list, depth: int) -> None:
    """Tables found in a result dict: ``rows`` lists, ``table`` strings, summary dicts/lists."""
    if depth > 3 or not isinstance(obj, dict):
        return
    heading = [f"#### {title}", ""] if title else []
    if _flat_rows(obj.get("rows")):
        out += heading + _rows_table(obj["rows"]) + [""]
    elif _flat_rows(obj.get("table")):
        out += heading + _rows_table(obj["table"]) + [""]
    elif isinstance(obj.get("table"), str) and obj["table"].strip():
        out += heading + ["```", obj["table"].rstrip(), "```", ""]
    for key, value in obj.items():
        if key in ("rows", "table"):
            continue
        sub = f"{title} / {key}" if title else str(key)
        if key in _SUMMARY_KEYS and _flat_rows(value):
            out += [f"#### {sub}", ""] + _rows_table(value) + [""]
        elif key in _SUMMARY_KEYS and isinstance(value, dict) and all(isinstance(v, _SCALAR) for v in value.values()):
            out += [f"#### {sub}", ""] + [f"- {k}: {_fmt(v)}" for k, v in value.items()] + [""]
        elif key in _SUMMARY_KEYS and _dict_of_rows(value):
            rows = [dict({"name": k}, **v) for k, v in value.items()]
            out += [f"#### {sub}", ""] + _rows_table(rows) + [""]
        elif isinstance(value, dict):
            _collect(value, sub, out, depth + 1)
        elif isinstance(value, list) and 0 < len(value) <= 20 and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                _collect(item, f"{sub} / {_label(item, i)}", out, depth + 1)


def _generic_section(results: dict) -> list[str]:
    out: list = []
    _collect(results, "", out, 0)
    return out or ["(no table in this result file)"]


def render_results(results_dir: str = os.path.join("bench", "results"), figure_prefix: str = "bench/results") -> str:
    """The Markdown "Results" section for every ``*.json`` in ``results_dir``.

    Examples
    --------
    >>> text = render_results("/nonexistent")
    >>> text.startswith("## Results")
    True
    """
    files = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(results_dir, "*.json"))}
    names = [n for n in ORDER if n in files] + sorted(n for n in files if n not in ORDER)
    lines = ["## Results", "",
             "<!-- generated by `python bench/readme_results.py` from bench/results/*.json; do not edit -->", ""]
    if not names:
        lines.append("No benchmark results yet: run `python bench/poisson.py` (or `linsolve bench NAME`).")
        return "\n".join(lines) + "\n"
    figure = next((f for f in FIGURE if os.path.exists(os.path.join(results_dir, f))), None)
    if figure:
        lines += [f"![3D Poisson: time vs grid size]({figure_prefix.rstrip('/')}/{figure})", ""]
    for name in names:
        try:
            with open(files[name], encoding="utf-8") as fh:
                payload = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            lines += [f"### `{name}`", "", f"(unreadable result file: {exc})", ""]
            continue
        results = payload.get("results", {})
        args = payload.get("arguments", {})
        mode = " (quick mode)" if args.get("quick") else ""
        machine = _machine_line(payload.get("machine", {}))
        script = os.path.join(os.path.dirname(os.path.abspath(results_dir)), f"{name}.py")  # bench/NAME.py
        source = f"`python bench/{name}.py`" if os.path.isfile(script) else f"`{figure_prefix}/{name}.json`"
        lines += [f"### `{name}`{mode}", "", f"{source} — {machine}.", ""]
        lines += _poisson_section(results) if name == "poisson" else _generic_section(results)
        notes = results.get("notes") if isinstance(results, dict) else None
        if isinstance(notes, str) and notes.strip():
            notes = [notes]
        if isinstance(notes, list) and notes:
            lines += [""] + [f"- {n}" for n in notes if isinstance(n, str)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_headline(results_dir: str, figure_prefix: str, results_link: str) -> str:
    """The README's generated part: the headline figure and a link to the full tables.

    Examples
    --------
    >>> print(render_headline("/nonexistent", "bench/results", "docs/RESULTS.md"))
    All benchmark tables, machines and settings: [docs/RESULTS.md](docs/RESULTS.md).
    <BLANKLINE>
    """
    lines = []
    figure = next((f for f in FIGURE if os.path.exists(os.path.join(results_dir, f))), None)
    if figure:
        lines += [f"![3D Poisson: time vs grid size]({figure_prefix.rstrip('/')}/{figure})", ""]
    lines.append(f"All benchmark tables, machines and settings: [{results_link}]({results_link}).")
    return "\n".join(lines) + "\n"


def _relative(path: str, start_file: str) -> str:
    """``path`` relative to the folder of ``start_file``, with forward slashes (Markdown links)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(start_file)))
    return rel.replace(os.sep, "/")


def splice(readme_text: str, section: str) -> str:
    """Replace the text between the results markers (markers kept); error if absent.

    Examples
    --------
    >>> splice("a\\n<!-- results:start -->\\nold\\n<!-- results:end -->\\nb", "new\\n")
    'a\\n<!-- results:start -->\\nnew\\n<!-- results:end -->\\nb'
    """
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme_text):
        raise ValueError(f"the README has no {START} ... {END} markers to replace")
    return pattern.sub(lambda _: f"{START}\n{section}{END}", readme_text, count=1)


def main(argv=None) -> int:
    """Write docs/RESULTS.md (and optionally the headline figure and link into a README).

    Examples
    --------
    >>> from linsolve.benchmarks.readme_results import main
    >>> main(["--out", "/tmp/RESULTS.md"])  # doctest: +SKIP
    0
    """
    from .._io import atomic_write_text

    parser = argparse.ArgumentParser(prog="python bench/readme_results.py",
                                     description="Generate the README 'Results' section from bench/results/*.json")
    parser.add_argument("--results", default=os.path.join("bench", "results"), help="results folder")
    parser.add_argument("--out", default=os.path.join("docs", "RESULTS.md"), help="Markdown file to write")
    parser.add_argument("--readme", default=None,
                        help="also replace the section between the results markers in this README")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.results):
        print(f"readme_results: error: results folder not found: {args.results}", file=sys.stderr)
        return 2
    section = render_results(args.results, figure_prefix=_relative(args.results, args.out))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, section)
    print(f"written: {args.out}")
    if args.readme:
        with open(args.readme, encoding="utf-8") as fh:
            text = fh.read()
        headline = render_headline(args.results, _relative(args.results, args.readme),
                                   _relative(args.out, args.readme))
        try:
            atomic_write_text(args.readme, splice(text, headline))
        except ValueError as exc:
            print(f"readme_results: error: {exc}", file=sys.stderr)
            return 2
        print(f"updated: {args.readme}")
    return 0
