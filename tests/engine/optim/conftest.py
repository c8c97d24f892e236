"""Fixtures of the folders these tests came from."""
from tests.methods.conftest import *  # noqa: F401,F403  (its fixtures, for the tests that moved here)
