"""Benchmarks of reconciler against aptly on the same synthetic archive (see README.md)."""
