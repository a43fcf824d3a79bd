"""`python -m web`: the same as `wfg serve`."""

import sys

from .server import main

sys.exit(main())
