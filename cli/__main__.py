"""``python -m framestream.cli``: the ``stream`` command."""

import sys

from framestream.cli.main import main

sys.exit(main())
