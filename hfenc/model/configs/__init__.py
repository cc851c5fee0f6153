"""Bundled config.json files (values only) for offline lock plans."""
