"""``python -m kvs_toolkit.cli``: the same as the ``kvs`` command."""

import sys

from kvs_toolkit.cli import main

sys.exit(main())
