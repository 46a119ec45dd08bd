"""``python -m napari_medadv.cli``."""

import sys

from . import entry

sys.exit(entry())
