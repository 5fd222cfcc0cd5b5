"""The code location entry point named in `workspace.yaml`: `dagctl_dagster.defs.location:defs`."""

from .definitions import load_definitions

defs = load_definitions()
