"""``python -m lab.service``: the update service alone (see lab.service.run)."""

from lab.service.run import main

raise SystemExit(main())
