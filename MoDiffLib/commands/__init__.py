"""Subcommands of the ``modiff`` command line, one module each (see :mod:`MoDiffLib.cli`)."""
