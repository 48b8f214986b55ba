"""The package version (one source: pyproject reads nothing from here; keep them equal)."""
__version__ = "0.1.0"
