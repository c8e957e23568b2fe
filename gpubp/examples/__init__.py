"""Example problems for `gpubp explain` (JSON files read with importlib.resources)."""
