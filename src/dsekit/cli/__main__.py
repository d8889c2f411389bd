"""``python -m dsekit.cli`` (the same as ``python -m dsekit`` and ``dsekit``)."""

import sys

from . import main

sys.exit(main())
