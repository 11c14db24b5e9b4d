"""Shared pytest configuration: the generic fixtures live in tests.support.fixtures,
the state backend switch (`--state=postgres`) in tests.support.statefixtures."""

from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.statefixtures import *  # noqa: F401,F403
