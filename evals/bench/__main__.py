import sys

from framestream.evals.bench.cli import main

sys.exit(main())
