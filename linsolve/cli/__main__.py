"""``python -m linsolve.cli ...``: the ``linsolve`` command."""
import sys

from . import main

sys.exit(main())
