"""The add-on's backend client: spawn, non-blocking poll, call, errors, death."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backend.core.client import BackendClient, BackendDied, BackendError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def client(tmp_path):
    env = {**os.environ, "LAM_HEAD_HOME": str(tmp_path / "home")}
    c = BackendClient(sys.executable, REPO, env=env).start()
    yield c
    c.kill()


def test_client_module_needs_only_the_standard_library():
    import ast

    src = (REPO / "backend" / "core" / "client.py").read_text()
    roots = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names), roots - set(sys.stdlib_module_names)


def test_call_poll_errors_and_shutdown(client):
    t0 = time.monotonic()
    assert client.poll(0) == []  # non-blocking
    assert time.monotonic() - t0 < 0.5
    hello = client.call("hello", timeout=120)
    assert hello["protocol"] == 1 and hello["python"] == ".".join(map(str, sys.version_info[:3]))
    assert hello["torch"] and hello["device"]
    with pytest.raises(BackendError) as ei:
        client.call("fly", {}, timeout=30)
    assert ei.value.code == "unknown_method"
    with pytest.raises(BackendError) as ei:
        client.call("create", {"image": "x.jpg"}, timeout=30)
    assert ei.value.code == "bad_params"
    rid = client.send("hello")
    msgs = []
    deadline = time.monotonic() + 30
    while not msgs and time.monotonic() < deadline:
        msgs = client.poll(0.2)
    assert msgs[0]["id"] == rid and "result" in msgs[0]
    assert client.shutdown() == 0
    assert not client.alive
    with pytest.raises(BackendDied):
        client.send("hello")


def test_missing_assets_error_names_the_fix(client, tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"x")
    with pytest.raises(BackendError) as ei:
        client.call("create", {"image": str(photo), "output": str(tmp_path / "a.npz")}, timeout=60)
    assert ei.value.code == "missing_assets"
    assert "run: lam-head setup --accept-licences" in str(ei.value)


def test_killed_backend_raises_backend_died(client):
    client.call("hello", timeout=120)
    rid = client.send("doctor")
    client._proc.kill()  # as if the OS killed it
    with pytest.raises(BackendDied) as ei:
        client.wait(rid, timeout=30)
    assert "exit" in str(ei.value)
    assert not client.alive


def test_backend_dying_mid_job_reports_its_stderr(tmp_path):
    root = tmp_path / "fake"
    (root / "backend").mkdir(parents=True)
    (root / "backend" / "__init__.py").write_text("")
    (root / "backend" / "__main__.py").write_text(textwrap.dedent("""
        import json, sys
        line = sys.stdin.readline()
        rid = json.loads(line)["id"]
        print(json.dumps({"id": rid, "event": "progress", "stage": "network", "fraction": 0.5, "message": ""}), flush=True)
        print("Traceback: simulated crash in block 3", file=sys.stderr, flush=True)
        sys.exit(3)
    """))
    events = []
    c = BackendClient(sys.executable, root).start()
    try:
        with pytest.raises(BackendDied) as ei:
            c.call("create", {"image": "a", "output": "b.npz"}, on_event=events.append, timeout=60)
        msg = str(ei.value)
        assert "simulated crash in block 3" in msg and "exit status 3" in msg
        assert ei.value.code == "backend_died"
        assert events and events[0]["stage"] == "network"
    finally:
        c.kill()


def test_missing_python_raises_backend_died(tmp_path):
    with pytest.raises(BackendDied, match="could not start"):
        BackendClient(tmp_path / "no-such-python", REPO).start()
