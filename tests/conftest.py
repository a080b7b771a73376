"""Shared pytest configuration for vhdkit's tests."""

from __future__ import annotations

# Azurite fixtures: azurite_url, blob_service, container (see tests/azurite_plugin.py).
pytest_plugins = ["azurite_plugin"]
