"""Observed state: the SQLite database (db.py) and per-kind stores over it (stores.py)."""
