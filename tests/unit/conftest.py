"""Fixtures the unit tests share."""

import pytest

from tests.unit.text_service_fixture import running_text_service


@pytest.fixture
async def services():
    """Running text services started by a test, stopped after it."""
    contexts = []

    async def start(backend):
        context = running_text_service(backend)
        contexts.append(context)
        return await context.__aenter__()

    yield start
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)
