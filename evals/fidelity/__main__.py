"""``python -m framestream.evals.fidelity``: the same as ``stream eval fidelity``."""

import sys

from framestream.evals.fidelity.cli import main

sys.exit(main())
