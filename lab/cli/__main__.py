"""``python -m lab.cli``: the same as the ``lab`` command."""

from lab.cli import main

raise SystemExit(main())
