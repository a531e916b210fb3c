"""``lam-head serve``: the JSON-lines protocol, robustness, cancel, stdout hygiene.

In-process tests drive :class:`backend.server.Server` over real pipes with small
job functions (the protocol alone); subprocess tests run ``python -m backend
serve`` as the add-on does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backend.core.errors import BadInputError
from backend.server import Server

REPO = Path(__file__).resolve().parents[1]


class Pipe:
    """A Server on os pipes, in a thread; send lines, read answers."""

    def __init__(self, jobs):
        in_r, self._in_w = os.pipe()
        self._out_r, out_w = os.pipe()
        self.server = Server(os.fdopen(in_r, "rb"), os.fdopen(out_w, "w", encoding="utf-8"), jobs=jobs,
                             hello=lambda: {"protocol": 1, "version": "test"})
        self.exit_code = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._reader = os.fdopen(self._out_r, "r", encoding="utf-8")
        self._lines: list[dict] = []
        self._lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _run(self):
        self.exit_code = self.server.serve_forever()
        self.server.outstream.close()

    def _read(self):
        for line in self._reader:
            with self._lock:
                self._lines.append(json.loads(line))
                self._lock.notify_all()

    def send_raw(self, text: str) -> None:
        os.write(self._in_w, text.encode())

    def send(self, rid, method, params=None) -> None:
        self.send_raw(json.dumps({"id": rid, "method": method, "params": params or {}}) + "\n")

    def wait_for(self, pred, timeout=10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for m in self._lines:
                    if pred(m):
                        self._lines.remove(m)
                        return m
                left = deadline - time.monotonic()
                assert left > 0, f"no matching message; got {self._lines}"
                self._lock.wait(left)

    def answer(self, rid, timeout=10.0) -> dict:
        return self.wait_for(lambda m: m.get("id") == rid and ("result" in m or "error" in m), timeout)

    def close(self):
        if self._in_w is not None:
            os.close(self._in_w)
            self._in_w = None
        self.thread.join(5)


def slow_job(params, ctx):
    """Reports progress until cancelled (or 5 s)."""
    for i in range(500):
        ctx.progress("network", i / 500, f"block {i}")
        ctx.cancel.check()
        time.sleep(0.01)
    return {"done": True}


def quick_job(params, ctx):
    ctx.progress("decode", 0.5, "")
    ctx.warn("something odd")
    return {"avatar": params["output"]}


def failing_job(params, ctx):
    raise BadInputError("photo unreadable: try another")


def crashing_job(params, ctx):
    raise ZeroDivisionError("bug")


@pytest.fixture
def pipe():
    jobs = {"create": quick_job, "doctor": lambda p, c: {"ready": False}}
    p = Pipe(jobs)
    yield p
    p.close()


def test_malformed_input_gets_errors_and_server_keeps_answering(pipe):
    pipe.send_raw("this is not json\n")
    m = pipe.wait_for(lambda m: "error" in m)
    assert m["id"] is None and m["error"]["code"] == "bad_request" and "JSON" in m["error"]["message"]
    pipe.send_raw("[1, 2]\n")
    assert pipe.wait_for(lambda m: "error" in m)["error"]["code"] == "bad_request"
    pipe.send_raw(json.dumps({"id": "seven", "method": "hello"}) + "\n")
    assert pipe.wait_for(lambda m: "error" in m)["error"]["code"] == "bad_request"
    pipe.send(1, "no_such_method")
    err = pipe.answer(1)["error"]
    assert err["code"] == "unknown_method" and "create" in err["message"]
    pipe.send_raw(json.dumps({"id": 2}) + "\n")
    assert pipe.answer(2)["error"]["code"] == "bad_request"
    pipe.send_raw("\xff\xfe garbage \x00\n")
    assert pipe.wait_for(lambda m: "error" in m)["error"]["code"] == "bad_request"
    pipe.send(3, "hello")
    assert pipe.answer(3)["result"] == {"protocol": 1, "version": "test"}


@pytest.mark.parametrize(
    "params, needle",
    [
        ({}, "missing parameter 'image'"),
        ({"image": "a.jpg"}, "missing parameter 'output'"),
        ({"image": 5, "output": "a.npz"}, "'image' must be str"),
        ({"image": "a.jpg", "output": "a.npz", "precision": "fp64"}, "precision must be one of"),
        ({"image": "a.jpg", "output": "a.npz", "colour": "red"}, "unknown parameter(s) colour"),
        ({"image": "a.jpg", "output": "a.npz", "weights": True}, "'weights' must be str or null"),
        ({"image": "", "output": "a.npz"}, "'image' is empty"),
    ],
)
def test_bad_params_are_refused_with_the_reason(pipe, params, needle):
    pipe.send(7, "create", params)
    err = pipe.answer(7)["error"]
    assert err["code"] == "bad_params" and needle in err["message"]
    pipe.send_raw(json.dumps({"id": 8, "method": "create", "params": [1]}) + "\n")
    assert pipe.answer(8)["error"]["code"] == "bad_params"


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"output": "a.npz"}, "missing parameter 'images'"),
        ({"images": "a.jpg b.jpg", "output": "a.npz"}, "'images' must be list"),
        ({"images": ["a.jpg", ""], "output": "a.npz"}, "list of photo paths"),
        ({"images": ["a.jpg", 3], "output": "a.npz"}, "list of photo paths"),
        ({"images": ["a.jpg", "b.jpg"], "output": "a.npz", "refine_iterations": -1}, "0 or more"),
        ({"images": ["a.jpg", "b.jpg"], "output": "a.npz", "refine_iterations": True}, "must be int"),
        ({"images": ["a.jpg", "b.jpg"], "output": "a.npz", "refine_seconds": 0}, "positive number"),
        ({"images": ["a.jpg", "b.jpg"], "output": "a.npz", "refine_size": 8}, "16 to 1024 pixels"),
        ({"images": ["a.jpg", "b.jpg"], "output": "a.npz", "precision": "fp64"}, "precision must be one of"),
        ({"images": ["a.jpg", "b.jpg"], "output": "a.npz", "image": "a.jpg"}, "unknown parameter(s) image"),
    ],
)
def test_bad_views_params_are_refused_with_the_reason(params, needle):
    p = Pipe({"create_views": quick_job})
    try:
        p.send(7, "create_views", params)
        err = p.answer(7)["error"]
        assert err["code"] == "bad_params" and needle in err["message"]
    finally:
        p.close()


def test_job_events_then_result(pipe):
    pipe.send(5, "create", {"image": "x.jpg", "output": "y.npz"})
    prog = pipe.wait_for(lambda m: m.get("event") == "progress")
    assert prog == {"id": 5, "event": "progress", "stage": "decode", "fraction": 0.5, "message": ""}
    assert pipe.wait_for(lambda m: m.get("event") == "warning") == {"id": 5, "event": "warning", "message": "something odd"}
    assert pipe.answer(5) == {"id": 5, "result": {"avatar": "y.npz"}}


def test_failed_and_crashed_jobs_become_errors():
    p = Pipe({"create": failing_job, "doctor": crashing_job})
    try:
        p.send(1, "create", {"image": "a", "output": "b.npz"})
        assert p.answer(1)["error"] == {"code": "bad_input", "message": "photo unreadable: try another"}
        p.send(2, "doctor")
        err = p.answer(2)["error"]
        assert err["code"] == "internal" and "ZeroDivisionError" in err["message"]
        p.send(3, "hello")
        assert "result" in p.answer(3)
    finally:
        p.close()


def test_one_job_at_a_time_and_cancel():
    p = Pipe({"create": slow_job})
    try:
        p.send(1, "create", {"image": "a", "output": "b.npz"})
        p.wait_for(lambda m: m.get("event") == "progress")
        p.send(2, "create", {"image": "a", "output": "c.npz"})
        assert p.answer(2)["error"]["code"] == "busy"
        p.send(3, "cancel", {"target": 99})
        assert p.answer(3)["result"] == {"cancelled": False}
        p.send(4, "hello")  # answered while the job runs
        assert "result" in p.answer(4)
        p.send(5, "cancel", {"target": 1})
        assert p.answer(5)["result"] == {"cancelled": True}
        err = p.answer(1)["error"]
        assert err["code"] == "cancelled"
        p.send(6, "create", {"image": "a", "output": "b.npz"})  # free again
        p.wait_for(lambda m: m.get("id") == 6 and m.get("event") == "progress")
        p.send(7, "cancel", {"target": 6})
        assert p.answer(6)["error"]["code"] == "cancelled"
    finally:
        p.close()


def test_shutdown_answers_then_stops_and_cancels_the_job():
    p = Pipe({"create": slow_job})
    p.send(1, "create", {"image": "a", "output": "b.npz"})
    p.wait_for(lambda m: m.get("event") == "progress")
    p.send(2, "shutdown")
    assert p.answer(2)["result"] == {}
    assert p.answer(1)["error"]["code"] == "cancelled"
    p.thread.join(10)
    assert not p.thread.is_alive() and p.exit_code == 0
    p.close()


def test_end_of_input_stops_the_server(pipe):
    pipe.close()
    assert not pipe.thread.is_alive() and pipe.exit_code == 0


# -- the real command in a subprocess -------------------------------------------
def _serve(tmp_path, **env):
    e = {**os.environ, "LAM_HEAD_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen([sys.executable, "-m", "backend", "serve"], cwd=REPO, env=e, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_protocol_stream_keeps_stray_prints_off_stdout():
    code = (
        "import os, sys\n"
        "from backend.cli.serve import protocol_stream\n"
        "out = protocol_stream()\n"
        "print('library noise')\n"
        "os.write(1, b'C-level noise\\n')\n"
        "out.write('{\"id\": 1, \"result\": {}}\\n'); out.flush()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == '{"id": 1, "result": {}}\n'
    assert "library noise" in r.stderr and "C-level noise" in r.stderr


def test_real_server_reports_missing_assets_with_the_fix(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not really a jpeg")
    proc = _serve(tmp_path)
    try:
        def ask(line: str) -> dict:
            proc.stdin.write(line)
            proc.stdin.flush()
            while True:  # every stdout line must be protocol JSON
                msg = json.loads(proc.stdout.readline())
                if "result" in msg or "error" in msg:
                    return msg

        assert ask("garbage\n")["error"]["code"] == "bad_request"
        create = {"image": str(photo), "output": str(tmp_path / "a.npz")}
        err = ask(json.dumps({"id": 1, "method": "create", "params": create}) + "\n")["error"]
        assert err["code"] == "missing_assets"
        assert "lam-head setup --accept-licences" in err["message"]
        assert "lam-head setup --weights DIR" in err["message"]
        report = ask(json.dumps({"id": 2, "method": "doctor", "params": {}}) + "\n")["result"]
        assert report["ready"] is False
        weights = next(a for a in report["assets"] if a["name"] == "weights")
        assert weights["present"] is False and weights["fix"].startswith("lam-head setup --accept-licences")
        assert ask(json.dumps({"id": 3, "method": "shutdown", "params": {}}) + "\n") == {"id": 3, "result": {}}
        proc.wait(30)
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "lam-head serve ready" in err
    assert not (tmp_path / "a.npz").exists()


# -- the whole chain through serve + client (tiny checkpoint, synthetic FLAME) --------------
@pytest.fixture(scope="module")
def backend_kit(tmp_path_factory):
    from factories.checkpoint import make_tiny_weights_dir
    from factories.flame import write_synthetic_flame
    from factories.images import write_corpus

    from backend.core.client import BackendClient

    root = tmp_path_factory.mktemp("serve")
    kit = {
        "root": root,
        "weights": str(make_tiny_weights_dir(root)),
        "flame": str(write_synthetic_flame(root / "flame2023.pkl")),
        "corpus": write_corpus(root / "corpus"),
    }
    env = {**os.environ, "LAM_HEAD_HOME": str(root / "home")}
    client = BackendClient(sys.executable, REPO, env=env).start()
    kit["client"] = client
    yield kit
    client.kill()


def _create(kit, name: str, **extra) -> dict:
    return {"image": str(kit["corpus"][name]), "output": str(kit["root"] / "out" / f"{name}.npz"),
            "weights": kit["weights"], "flame": kit["flame"], **extra}


def test_serve_creates_a_valid_avatar(backend_kit):
    from backend.core.formats.avatar_file import load_avatar

    events = []
    res = backend_kit["client"].call("create", _create(backend_kit, "upright.jpg"), on_event=events.append, timeout=300)
    avatar = load_avatar(res["avatar"])
    assert avatar.n_points > 1000 and avatar.meta["source_image"] == "upright.jpg"
    assert set(res["timings"]) >= {"decode", "detect", "matte", "fit", "rig", "network", "write"}
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert stages.index("decode") < stages.index("network") < stages.index("write")
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == res["warnings"]  # each warning is sent as an event and listed in the result


# What each corpus photo must give: "ok" (valid avatar) or the error code.
CORPUS_EXPECTED = {
    "empty.jpg": "bad_input", "truncated.jpg": "bad_input", "text.png": "bad_input", "one_pixel.png": "bad_input",
    "no_face.jpg": "no_face", "upright.png": "ok", "rgb16.png": "ok", "grey16.png": "ok", "cmyk.jpg": "ok",
    "rgba.png": "ok", "grey.jpg": "ok", "palette.png": "ok", "exif_rotated.jpg": "ok", "exif_rotated.png": "ok",
    "three_faces.jpg": "ok",
}


def test_serve_bad_input_corpus(backend_kit):
    from backend.core.client import BackendError
    from backend.core.formats.avatar_file import load_avatar

    client = backend_kit["client"]
    outcomes = {}
    for name in backend_kit["corpus"]:
        params = _create(backend_kit, name)
        try:
            res = client.call("create", params, timeout=300)
            load_avatar(res["avatar"])
            outcomes[name] = "ok"
            if name == "three_faces.jpg":
                assert any("faces" in w for w in res["warnings"])
        except BackendError as exc:
            outcomes[name] = exc.code
            assert exc.code in ("bad_input", "no_face"), (name, exc.code, str(exc))
            assert len(str(exc)) > 20 and "Traceback" not in str(exc)
            assert not Path(params["output"]).exists()
        assert client.call("hello", timeout=60)["protocol"] == 1  # still serving
    for name, want in CORPUS_EXPECTED.items():
        assert outcomes[name] == want, (name, outcomes[name])
    assert outcomes.get("drawing.png") in ("ok", "no_face", "bad_input")  # line art: a clear answer either way


def test_serve_creates_one_avatar_from_two_photos(backend_kit):
    """create_views: the joint path through the real server (2 refinement iterations, small)."""
    from backend.core.formats.avatar_file import load_avatar

    corpus, events = backend_kit["corpus"], []
    params = {"images": [str(corpus["upright.jpg"]), str(corpus["exif_rotated.jpg"])],
              "output": str(backend_kit["root"] / "out" / "views.npz"), "weights": backend_kit["weights"],
              "flame": backend_kit["flame"], "refine_iterations": 2, "seed": 1}
    res = backend_kit["client"].call("create_views", params, on_event=events.append, timeout=300)
    avatar = load_avatar(res["avatar"])
    assert [p["name"] for p in avatar.meta["views"]["photos"]] == ["upright.jpg", "exif_rotated.jpg"]
    assert res["network_photo"] == avatar.meta["views"]["network_photo"] and res["network_reason"]
    assert res["refinement"]["iterations"] == 2 == avatar.meta["refinement"]["iterations"]
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sum(1 for e in events if e["event"] == "progress" and e["stage"] == "refine" and "loss" in e["message"]) >= 1


def test_serve_views_bad_photo_is_named_and_lam_zip_needs_the_template(backend_kit):
    from backend.core.client import BackendError

    corpus, client, out = backend_kit["corpus"], backend_kit["client"], backend_kit["root"] / "out"
    params = {"images": [str(corpus["upright.jpg"]), str(corpus["no_face.jpg"])], "output": str(out / "bad.npz"),
              "weights": backend_kit["weights"], "flame": backend_kit["flame"], "refine_iterations": 1}
    with pytest.raises(BackendError) as exc:
        client.call("create_views", params, timeout=300)
    assert exc.value.code == "no_face" and "no_face.jpg" in str(exc.value)
    assert not Path(params["output"]).exists()
    # --lam-zip through the server: refused before any work when no LAM template is registered
    single = {**_create(backend_kit, "upright.jpg"), "output": str(out / "web.npz"), "lam_zip": str(out / "web.zip")}
    with pytest.raises(BackendError) as exc:
        client.call("create", single, timeout=300)
    assert "needs a template" in str(exc.value) and not Path(single["output"]).exists()
    assert not (out / "web.zip").exists()


def test_serve_cancel_leaves_no_output(backend_kit):
    from backend.core.client import BackendError

    client = backend_kit["client"]
    params = _create(backend_kit, "upright.jpg", ply=str(backend_kit["root"] / "out" / "cancelled.ply"))
    params["output"] = str(backend_kit["root"] / "out" / "cancelled.npz")
    rid = client.send("create", params)
    cancelled = []

    def on_event(ev):  # cancel once the network has run its first block
        if ev["event"] == "progress" and ev["stage"] == "network" and "1/" in ev["message"] and not cancelled:
            cancelled.append(client.cancel(rid))

    with pytest.raises(BackendError) as ei:
        client.wait(rid, on_event=on_event, timeout=300)
    assert cancelled and ei.value.code == "cancelled"
    assert not Path(params["output"]).exists() and not Path(params["ply"]).exists()
    assert not list((backend_kit["root"] / "out").glob(".cancelled*"))
    assert client.call("hello", timeout=60)["protocol"] == 1


def test_serve_killed_mid_job_is_backend_died(backend_kit):
    from backend.core.client import BackendDied

    client = backend_kit["client"]
    rid = client.send("create", _create(backend_kit, "upright.jpg"))
    got = []
    with pytest.raises(BackendDied) as ei:
        client.wait(rid, on_event=lambda ev: got.append(ev) or (len(got) == 1 and client._proc.kill()), timeout=300)
    assert got and "exit status" in str(ei.value)
