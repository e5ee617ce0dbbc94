"""Provenance of what we write (model files, benchmark results): the git commit of this checkout."""
from __future__ import annotations

import os
import subprocess

__all__ = ["git_commit"]


def git_commit() -> str:
    """``HEAD`` of the checkout this package runs from (``+dirty`` with local changes), or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=os.path.dirname(os.path.abspath(__file__)))
        if dirty.returncode == 0 and dirty.stdout.strip():
            commit += "+dirty"
        return commit
    except Exception:
        return "unknown"
