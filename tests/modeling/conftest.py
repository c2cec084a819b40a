"""The marks transformers' common test files use, registered (the suite runs with --strict-markers)."""

from tests.transformers_common import MARKERS


def pytest_configure(config):
    for name in MARKERS:
        config.addinivalue_line("markers", f"{name}: a mark of transformers' common tests")
