"""`python -m edgesdk` is the `edgesdk` command."""

from .cli import main

raise SystemExit(main())
