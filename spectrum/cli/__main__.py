"""
C{python -m spectrum.cli}: the C{spectrum} command without its script.
"""

import sys

from spectrum.cli import main

sys.exit(main())
