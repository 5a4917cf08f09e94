"""The README, run as a newcomer runs it: `make run` in a clean environment (no PYTHONPATH, no activated
venv), then the README's own Python and curl blocks against it, read from README.md now (so an edit
that breaks them fails here), with only the base URL and the key substituted. Then two text Tritons,
one SIGKILLed under a stream: the stream ends as it would have, `make run` starts the Triton again and
keeps serving. SIGTERM to `make run` leaves no process, no port and no /dev/shm region behind."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest
from openai import OpenAI

from local.prometheus import metric_sum
from local.stack import ROOT
from tests.e2e.make_run import DEFAULT_BASE_URL, MakeRun, clean_environment, stack_ports

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
KEY_PLACEHOLDER = '"hm-..."'
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def readme_blocks(language: str) -> list[str]:
    """The bodies of the README's fenced blocks of `language` ("" for plain ones), in order."""
    blocks, current, fence = [], None, None
    for line in README.read_text().splitlines(keepends=True):
        if current is None and line.startswith("```"):
            fence, current = line[3:].strip(), []
        elif current is not None and line.rstrip() == "```":
            if fence == language:
                blocks.append("".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def documented_base_url() -> str:
    """The base URL the README says `make run` prints."""
    (printed,) = [b for b in readme_blocks("") if "hubmesh is running." in b]
    return re.search(r"Base URL : (\S+)", printed).group(1)


def for_this_stack(block: str, run: MakeRun) -> str:
    """The block with the documented base URL replaced by this stack's; nothing else may name a port."""
    code = block.replace(documented_base_url(), run.base_url)
    stray = set(re.findall(r"(?:127\.0\.0\.1|localhost):\d+", code)) - {f"127.0.0.1:{run.http_port}"}
    assert not stray, f"a README block names {stray}, not the documented {documented_base_url()}:\n{block}"
    return code


@pytest.fixture
def make_run(tmp_path):
    runs: list[MakeRun] = []

    def start(text_replicas: int = 1) -> MakeRun:
        run = MakeRun(clean_environment(**stack_ports(text_replicas)), tmp_path / f"run{len(runs)}")
        runs.append(run)
        run.start()
        return run

    yield start
    for run in runs:  # a failed test stops its stack too, then reports what it left behind
        if run.proc is not None and run.proc.poll() is None:
            run.stop()


def test_the_readme_documents_the_address_make_run_uses():
    assert documented_base_url() == DEFAULT_BASE_URL


def test_the_readmes_python_and_curl_blocks_run_against_make_run(make_run):
    run = make_run()
    python = "\n".join(for_this_stack(b, run) for b in readme_blocks("python"))
    assert python.count(KEY_PLACEHOLDER) == 1, "one OpenAI(...) client, with the README's placeholder key"
    python = python.replace(KEY_PLACEHOLDER, repr(run.api_key))
    done = subprocess.run([sys.executable, "-c", python], cwd=run.run_dir, env=clean_environment(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the README's Python failed:\n{done.stdout}\n{done.stderr}"
    printed = done.stdout.splitlines()
    assert MODEL in printed[0] and "sentence-transformers/all-MiniLM-L6-v2" in printed[0]
    assert "Paris" in printed[1]  # the greedy answer the README shows
    assert "384" in printed, done.stdout
    assert "remaining requests: 59" in done.stdout and "blocked: 401" in done.stdout, done.stdout  # a tenant's key

    curls = [b for b in readme_blocks("bash") if "curl " in b]
    assert sum(b.count("curl ") for b in curls) >= 4  # chat, embeddings, images, a stream
    for block in curls:
        script = "set -euo pipefail\ncurl() { command curl -sS --fail-with-body \"$@\"; }\n" + for_this_stack(block, run)
        done = subprocess.run(["bash", "-c", script], env=clean_environment(KEY=run.api_key),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"a README curl block failed:\n{block}\n{done.stdout[-2000:]}\n{done.stderr}"
        assert '"error"' not in done.stdout, done.stdout[-2000:]

    run.stop()
    assert not run.leftovers(), run.output()


def _stream(client: OpenAI, after=None) -> tuple[str, str]:
    """A long greedy stream's text and finish reason; `after(chunks_read)` runs once, after 3 chunks."""
    text, finish = [], None
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 300, separated by commas."}],
        temperature=0, max_tokens=200, stream=True,
    )
    for i, chunk in enumerate(stream):
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if i == 3 and after is not None:
            after()
    return "".join(text), finish


def test_a_killed_triton_is_started_again_while_its_stream_goes_on(make_run):
    run = make_run(text_replicas=2)
    client = OpenAI(base_url=run.base_url, api_key=run.api_key, max_retries=0, timeout=300)
    uninterrupted = _stream(client)
    metrics = f"http://127.0.0.1:{run.env['HUBMESH_TEXT_METRICS_PORT']}/metrics"
    text_grpc = int(run.env["HUBMESH_TEXT_TRITON_PORTS"].split(",")[1])
    replicas = {"triton-text": text_grpc, "triton-text-1": text_grpc + 100}
    killed: list[str] = []

    def kill_the_busy_replica():
        busy = [name for name, port in replicas.items()
                if metric_sum(metrics, "hubmesh_replica_in_flight", replica=f"127.0.0.1:{port}") > 0]
        assert len(busy) == 1, busy
        killed.append(busy[0])
        subprocess.run(["kill", "-KILL", str(run.pids[busy[0]])], check=True)  # the server, as a user would

    assert _stream(client, after=kill_the_busy_replica) == uninterrupted  # token for token, on the other one
    assert metric_sum(metrics, "hubmesh_text_migrations_total", outcome="moved") >= 1
    (name,) = killed
    run.wait_for(rf"{name} exited \(killed by SIGKILL\); starting it again", 30)
    run.wait_for(rf"{name} is ready again", 300)
    with urllib.request.urlopen(f"http://127.0.0.1:{run.http_port}/ready", timeout=10) as ready:
        assert ready.status == 200
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert reply.choices[0].message.content
    assert re.search(r"status: .*triton-text up, triton-text-1 up", run.output())

    run.stop()
    assert not run.leftovers(), run.output()
