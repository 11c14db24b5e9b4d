"""reconciler: keep Debian package repositories in the state that YAML in git declares."""

__version__ = "0.1.0"
