"""``python -m zoedu`` (and ``torchrun … -m zoedu``): the ``zoedu`` command."""

import sys

from .cli import main

sys.exit(main())
