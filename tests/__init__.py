"""The test suite. A package, so that helpers import as `tests.helpers.…` however pytest is run."""
