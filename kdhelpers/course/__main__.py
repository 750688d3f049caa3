"""`python -m kdhelpers.course ...`: the course's command line (kdhelpers.course.cli)."""

import sys

from kdhelpers.course.cli import main

sys.exit(main())
