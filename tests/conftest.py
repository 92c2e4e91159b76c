"""Shared pytest set-up: fixtures that start real servers live in tests/fixtures/."""

pytest_plugins = [
    "fixtures.common",
    "fixtures.packet",
    "fixtures.oned",
]


SLOW_LAYERS = ("e2e", "reliability", "real_one")


def pytest_collection_modifyitems(config, items):
    """Mark the slow layers (namespaces, the reliability suite, the real oned) ``slow``, so
    ``./test.sh -m "not slow"`` runs the unit, integration and lab tests alone."""
    import pytest

    for item in items:
        parts = item.path.relative_to(config.rootpath / "tests").parts
        if parts and parts[0] in SLOW_LAYERS:
            item.add_marker(pytest.mark.slow)
