"""Mutations, each run as a locked task: reload fresh, re-check, mutate atomically."""
