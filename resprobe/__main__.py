"""``python -m resprobe`` = the ``resprobe`` command."""
from .cli import main

raise SystemExit(main())
