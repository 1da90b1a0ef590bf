"""``python -m privimage`` is the same as the ``privimage`` console script."""

from privimage.cli import main

raise SystemExit(main())
