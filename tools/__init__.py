"""Developer tools, not shipped: the docs generator (`python3 -m tools.gendocs`)."""
