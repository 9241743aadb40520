"""``python -m meshroute``: the same as the ``meshroute`` command."""

import sys

from meshroute.cli import main

sys.exit(main())
