"""Producer defaults shared by the library and the command line (a module with no
imports, so ``kvs produce --help`` stays cheap)."""

from typing import Final

#: Retention of a stream created with ``create_stream`` (hours).
DEFAULT_RETENTION_HOURS: Final = 24
#: CloudWatch metrics period (seconds): the finest standard-resolution period.
DEFAULT_INTERVAL_S: Final = 60.0
