"""/console (facade/console): the static pages are public, served as they are with their types and
a Content-Security-Policy that keeps them to this origin; nothing else under /console is; the requests
for them never reach the usage ledger; the page holds no key and the scripts keep it out of URLs and
out of localStorage."""

from __future__ import annotations

import re

import pytest

from facade.app import create_app
from facade.console import STATIC, files, paths
from facade.settings import Settings
from facade.store.usage import USAGE_LEDGER
from local.processes import free_port

KEY = "console-key"


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    unreachable = f"127.0.0.1:{free_port()}"
    app = create_app(Settings(api_keys=(KEY,), text_target=unreachable, embeddings_target=unreachable,
                              images_target=unreachable, database_url=f"sqlite:///{tmp_path / 'hubmesh.db'}",
                              usage_flush_interval_s=3600.0))
    return await aiohttp_client(app)


async def test_the_page_and_its_files_are_public_with_their_types(client):
    for path in ("/console", "/console/"):
        reply = await client.get(path)
        assert reply.status == 200
        assert reply.content_type == "text/html" and reply.charset == "utf-8"
        page = await reply.text()
        assert "<title>hubmesh console</title>" in page and 'src="/console/main.js"' in page
        assert reply.headers["Content-Security-Policy"].startswith("default-src 'self'; script-src 'self'")
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Referrer-Policy"] == "no-referrer"
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    for name, (content, _) in files().items():
        reply = await client.get(f"/console/{name}")
        assert reply.status == 200, name
        assert reply.content_type == types[name[name.rindex("."):]], name
        assert await reply.read() == content == (STATIC / name).read_bytes()
    head = await client.head("/console/main.js")
    assert head.status == 200


async def test_every_file_the_page_loads_is_served(client):
    page = (STATIC / "index.html").read_text()
    loaded = set(re.findall(r'(?:src|href)="/console/([^"]+)"', page))
    for script in STATIC.glob("*.js"):
        loaded |= set(re.findall(r'from "\./([^"]+)"', script.read_text()))
    assert loaded and loaded <= set(files()), loaded - set(files())
    assert set(paths()) == {"/console", "/console/", *(f"/console/{name}" for name in files())}


async def test_nothing_else_under_console_is_served(client):
    for path in ("/console/nope.js", "/console/../facade/settings.py", "/console/%2e%2e/app.py",
                 "/console/static/index.html", "/console/main.js/x"):
        reply = await client.get(path)  # unknown URLs: a credential first, then 404
        assert reply.status == 401, path
        assert (await reply.json())["error"]["code"] is not None
        reply = await client.get(path, headers={"Authorization": f"Bearer {KEY}"})
        assert reply.status == 404, path
        assert (await reply.json())["error"]["code"] == "unknown_url"
    reply = await client.post("/console", headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status == 405 and "error" in await reply.json()


async def test_console_requests_are_not_billed(client):
    for _ in range(3):
        assert (await client.get("/console/")).status == 200
    ledger = client.app[USAGE_LEDGER]
    assert ledger.pending == 0


def test_the_key_stays_in_session_storage_and_headers():
    scripts = {path.name: path.read_text() for path in STATIC.glob("*.js")}
    everything = "\n".join(scripts.values())
    assert "localStorage" not in everything and "document.cookie" not in everything
    assert "sessionStorage" in scripts["api.js"]
    assert "Authorization: `Bearer ${key.get()}`" in scripts["api.js"]
    assert "searchParams.set" in scripts["api.js"]  # query parameters: the filters, never the key
    assert not re.search(r"searchParams\.set\([^)]*key", everything)
    assert "innerHTML" not in everything  # text only: data never becomes markup
