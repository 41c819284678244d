"""``python -m pytest_distcov``."""

import sys

from .cli import main

sys.exit(main())
