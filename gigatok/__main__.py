"""``python -m gigatok`` is the ``gigatok`` command."""

import sys

from gigatok.cli import main

sys.exit(main())
