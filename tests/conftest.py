"""Shared pytest configuration: the generic fixtures live in tests.support.fixtures."""

from tests.support.fixtures import *  # noqa: F401,F403
