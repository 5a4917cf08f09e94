"""Fixtures of the manifest tests: each overlay rendered once per session, as `make k8s-check` does."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import Manifests
from tests.k8s.render import OVERLAYS, render


# Session-scoped and shared: tests read these objects and never change them (a test that needs to
# change one calls render() for its own copy).
@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def manifests(overlay) -> Manifests:
    return Manifests(render(overlay))


@pytest.fixture(scope="session")
def gpu() -> Manifests:
    return Manifests(render("gpu"))


@pytest.fixture(scope="session")
def cpu() -> Manifests:
    return Manifests(render("cpu"))
