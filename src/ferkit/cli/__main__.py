"""``python -m ferkit.cli`` runs the command-line interface, as ``python -m ferkit`` does."""

from ferkit.cli import main

raise SystemExit(main())
