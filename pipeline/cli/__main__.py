import sys

from latentwatch.pipeline.cli.main import main

sys.exit(main())
