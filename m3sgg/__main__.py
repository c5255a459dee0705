"""``python -m m3sgg`` runs the command-line interface."""

from m3sgg.cli import main

raise SystemExit(main())
