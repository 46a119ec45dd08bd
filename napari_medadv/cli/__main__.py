"""``python -m napari_medadv.cli``."""

import sys

from . import main

sys.exit(main())
