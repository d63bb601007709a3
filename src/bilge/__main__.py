"""``python -m bilge``: the same as the ``bilge`` console script."""

import sys

from bilge.cli import main

sys.exit(main())
