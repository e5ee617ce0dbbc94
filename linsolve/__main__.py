"""``python -m linsolve ...``: the ``linsolve`` command (same as ``python -m linsolve.cli``)."""
import sys

from .cli import main

sys.exit(main())
