"""Developer scripts run from the repository root with `python -m hack.<name>` (see the Makefile)."""
