"""``python -m regionvlm ...`` = the ``regionvlm`` command (used where a child process must run the same
interpreter, e.g. ``regionvlm ablate --jobs``)."""

import sys

from regionvlm.cli import main

sys.exit(main())
