import sys

from latentwatch.bench.cli import main

sys.exit(main())
