"""Shared pytest set-up: fixtures that start real servers live in tests/fixtures/."""

pytest_plugins = [
    "fixtures.common",
    "fixtures.packet",
    "fixtures.oned",
]
