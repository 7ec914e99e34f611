"""``python -m e3elastic``: the same program as the ``e3elastic`` command."""

import sys

from e3elastic.cli import main

sys.exit(main())
