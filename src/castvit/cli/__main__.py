"""``python -m castvit.cli …`` (what ``torchrun -m castvit.cli train …`` runs)."""

import sys

from castvit.cli import main

sys.exit(main())
