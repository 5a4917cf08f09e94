"""The web console (/console) in a real browser against the real stack: Debian's Chromium, headless,
driven by playwright-core (tests/e2e/console/drive.cjs; `make test` installs both, never a browser
download). Signed in with the admin key: the usage page shows the chat requests this test just made
(table and chart), a key created in the UI and revoked there gets 401 through the API, a playground
answer streams in, and the mesh page lists the text service's Triton replicas. Screenshots of every
page go to build/console/. Without Chromium, Node.js or playwright-core the test fails and says which."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import KEY, MODEL, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "e2e" / "console" / "drive.cjs"
NODE_MODULES = ROOT / "build" / "console-node" / "node_modules"
SCREENSHOTS = ROOT / "build" / "console"
CHROMIUM = "/usr/bin/chromium"
DRIVER_TIMEOUT_S = 480
CHAT_REQUESTS = 3


def browser_tools() -> str:
    """The node binary; fails the test (never skips) naming what is missing and how to get it."""
    missing = []
    node = shutil.which("node")
    if node is None:
        missing.append("Node.js (`node`: Debian's nodejs package)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium ({CHROMIUM}: Debian's chromium package; `make chromium` installs it)")
    if not (NODE_MODULES / "playwright-core" / "package.json").is_file():
        missing.append(f"playwright-core (in {NODE_MODULES}: `make console-node` installs it)")
    if missing:
        pytest.fail("the console's browser test cannot run: missing " + "; ".join(missing)
                    + ". `make test` installs them first.")
    assert node is not None
    return node


def test_the_console_in_a_real_browser(stack, client):
    node = browser_tools()
    base = stack.config.base_url  # http://127.0.0.1:<port>/v1
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    run = uuid.uuid4().hex[:8]

    # requests of a key of its own, so that the usage page's figures for it are exactly these
    # (the key of a team of its own: signed in with it, the console shows that team's usage only)
    caller = admin.post("/keys", json={"name": f"console-usage-{run}", "scopes": ["models", "chat"],
                                       "owner": f"team-{run}"})
    assert caller.status_code == 200, caller.text
    caller = caller.json()
    tenant = OpenAI(base_url=base, api_key=caller["key"], max_retries=0, timeout=120)
    for i in range(CHAT_REQUESTS):
        reply = tenant.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say {i}."}], max_tokens=4, temperature=0)
        assert reply.usage is not None and reply.usage.total_tokens > 0

    key_name = f"console-revoked-{run}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
        "NODE_PATH": str(NODE_MODULES),  # playwright-core, where `make console-node` put it
        "CONSOLE_URL": base.removesuffix("/v1") + "/console", "ADMIN_KEY": KEY, "MODEL": MODEL,
        "USAGE_SUBJECT": caller["subject"], "USAGE_REQUESTS": str(CHAT_REQUESTS), "TENANT_KEY": caller["key"],
        "KEY_NAME": key_name,
        "SCREENSHOTS": str(SCREENSHOTS), "CHROMIUM": CHROMIUM,
    }
    done = subprocess.run([node, str(DRIVER)], env=env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S,
                          cwd=ROOT)
    assert done.returncode == 0, f"the browser run failed:\n{done.stderr[-6000:]}\n{done.stdout[-2000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])

    # usage: the page showed this test's requests to the admin, and to the tenant signed in with its own
    # key those and its sign-in's GET /v1/models, nobody else's
    assert result["usage_requests"] == CHAT_REQUESTS
    assert result["tenant_requests"] == CHAT_REQUESTS + 1
    # keys: the key made, regenerated and revoked in the UI is refused through the API (its first secret
    # and its regenerated one), and gone from the list
    key_id = result["key_id"]
    assert key_id and len(set(result["secrets"])) == 2
    for secret in result["secrets"]:
        assert secret.startswith("sk-hm-")
        revoked = OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=30)

        def refused(revoked: OpenAI = revoked) -> bool:
            try:
                revoked.models.list()
            except openai.AuthenticationError as err:
                return err.status_code == 401
            return False

        wait_for(refused, timeout_s=10, what="the revoked key refused with 401")
    assert admin.get(f"/keys/{key_id}").status_code == 404
    # playground: an answer streamed into the page
    assert result["streamed"].strip()
    # mesh: the text service's replicas, as the stack started them (another test may have one restarting)
    started = {f"127.0.0.1:{r['triton_grpc']}" for r in stack.config.triton_ports("text")}
    assert {r["address"] for r in result["text_replicas"]} == started, result["text_replicas"]
    assert any(r["state"] == "ready" for r in result["text_replicas"]), result["text_replicas"]
    assert {s["service"]: s["available"] for s in result["mesh_services"]} == {
        "text": True, "embeddings": True, "images": True}
    # the same figures through the API the page reads
    mesh = admin.get("/mesh").json()
    assert {r["address"] for r in mesh["services"][0]["replicas"]} == started
    # a screenshot of every page
    for page in ("signin", "usage", "keys", "playground", "mesh"):
        shot = SCREENSHOTS / f"{page}.png"
        assert str(shot) in result["screenshots"] and shot.stat().st_size > 10_000, shot
    admin.delete(f"/keys/{caller['id']}")
    admin.close()
