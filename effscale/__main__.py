"""`python -m effscale`: the `effscale` command."""

import sys

from effscale.cli import main

sys.exit(main())
