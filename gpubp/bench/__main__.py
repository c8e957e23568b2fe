"""`python -m gpubp.bench`: the same as `gpubp bench`."""

import sys

from .cli import main

sys.exit(main())
