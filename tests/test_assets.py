"""Model assets: cache location, resumable verified downloads from a local HTTP
server on 127.0.0.1, licence gate, safe archive extraction, local files, doctor."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from backend import cli
from backend.core.errors import BadInputError
from backend.setup import archive, assets
from backend.setup.download import DownloadError, download

GOLDEN = Path("/work/shared/fixtures/lam_golden_a")


class FakeHub:
    """A Hugging Face-like file server: ``/<repo>/resolve/main/<file>``.

    LFS-style files answer with a 302 to ``/cdn/<file>`` carrying X-Linked-Size
    and X-Linked-Etag (sha256) like the real hub; plain files carry a git-blob
    ETag. Knobs: ``cut_next`` (send only half the body of the next N GETs, then
    close), ``corrupt`` (serve other bytes than declared), ``redirect_to``.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}  # "<repo>/<file>" -> bytes
        self.lfs: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range
        self.bodies: list[tuple[str, str, str | None]] = []  # the same, for answers that carry the file
        self.cut_next = 0
        self.corrupt: set[str] = set()
        self.redirect_to: str | None = None
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head):
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                path = self.path
                if path.startswith("/cdn/"):
                    key = path[len("/cdn/"):]
                    return self._body(key, head)
                if "/resolve/main/" not in path:
                    return self._plain(404)
                repo, name = path.lstrip("/").split("/resolve/main/")
                key = f"{repo}/{name}"
                if key not in hub.files:
                    return self._plain(404)
                data = hub.files[key]
                if key in hub.lfs:
                    self.send_response(302)
                    self.send_header("Location", (hub.redirect_to or "") + f"/cdn/{key}")
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._body(key, head, etag=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())

            def _plain(self, code):
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _body(self, key, head, etag=None):
                hub.bodies.append((self.command, key, self.headers.get("Range")))
                data = hub.files[key]
                if key in hub.corrupt:
                    data = bytes(b ^ 0x5A for b in data[:10]) + data[10:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                if etag:
                    self.send_header("ETag", f'"{etag}"')
                self.end_headers()
                if head:
                    return
                if hub.cut_next > 0:
                    hub.cut_next -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo: str, name: str, data: bytes, lfs: bool = True) -> None:
        self.files[f"{repo}/{name}"] = data
        if lfs:
            self.lfs.add(f"{repo}/{name}")

    def gets(self, name: str) -> list[str | None]:
        return [r for m, k, r in self.bodies if m == "GET" and k.endswith(name)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub():
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "lam-home"
    monkeypatch.setenv("LAM_HEAD_HOME", str(h))
    # no Hugging Face cache, mirror, token or offline switch of the machine running the tests
    for k in ("LAM_HEAD_ORIGIN", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return h


def _weights_bytes() -> tuple[bytes, bytes]:
    return (GOLDEN / "config.json").read_bytes(), (GOLDEN / "model.safetensors").read_bytes()


def test_home_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert assets.home() == tmp_path / "a"
    monkeypatch.delenv("LAM_HEAD_HOME")
    assert assets.home() == tmp_path / "x" / "lam-head"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert assets.home() == tmp_path / "h" / ".cache" / "lam-head"


def test_setup_downloads_verifies_and_doctor_sees_it(hub, home, capsys):
    cfg, st = _weights_bytes()
    hub.add(assets.WEIGHTS_REPO, "config.json", cfg, lfs=False)
    hub.add(assets.WEIGHTS_REPO, "model.safetensors", st, lfs=True)
    assert cli.main(["doctor"]) == 1
    assert "lam-head setup --accept-licences" in capsys.readouterr().out
    assert cli.main(["setup", "--accept-licences", "--origin", hub.origin]) == 0
    out = capsys.readouterr().out
    assert f"model.safetensors: {len(st)} bytes, verified: size {len(st)}, sha256 (origin's X-Linked-Etag)" in out
    assert f"config.json: {len(cfg)} bytes, verified: size {len(cfg)}, git blob sha1 (origin's ETag)" in out
    assert (home / "LAM-20K" / "model.safetensors").read_bytes() == st
    assert assets.installed_weights_dir() == home / "LAM-20K"
    manifest = json.loads((home / "assets.json").read_text())
    assert manifest["weights"]["files"]["model.safetensors"]["sha256"] == hashlib.sha256(st).hexdigest()
    assert "weights" in manifest["licences"]
    assert not list(home.rglob("*.part"))
    # FLAME still missing (the golden checkpoint has no FLAME buffers): doctor says how to get it
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[ok     ] weights" in out and "run: lam-head setup --accept-licences --lam-assets" in out
    # a second setup does not download again
    n = len(hub.requests)
    assert cli.main(["setup", "--accept-licences", "--origin", hub.origin]) == 0
    assert len(hub.requests) == n and "already installed" in capsys.readouterr().out


def test_interrupted_download_resumes_with_range(hub, tmp_path):
    data = bytes(range(256)) * 4000
    hub.add("r/x", "big.bin", data)
    hub.cut_next = 1
    dest = tmp_path / "big.bin"
    url = f"{hub.origin}/r/x/resolve/main/big.bin"
    with pytest.raises(DownloadError, match="interrupted.*run the same command again to resume"):
        download(url, dest, origin=hub.origin, retries=0)
    part = tmp_path / "big.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(data)
    kept = part.stat().st_size
    res = download(url, dest, origin=hub.origin, retries=0)
    assert hub.gets("big.bin") == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == data and res.sha256 == hashlib.sha256(data).hexdigest()
    assert not part.exists()


def test_setup_resumes_an_interrupted_transfer_within_one_run(hub, home):
    cfg, st = _weights_bytes()
    hub.add(assets.WEIGHTS_REPO, "config.json", cfg, lfs=False)
    hub.add(assets.WEIGHTS_REPO, "model.safetensors", st)
    hub.cut_next = 1  # the first GET (config.json) breaks half way
    assert cli.main(["setup", "--accept-licences", "--origin", hub.origin]) == 0
    ranges = hub.gets("config.json")
    assert ranges[0] is None and ranges[1] == f"bytes={len(cfg) // 2}-"
    assert (home / "LAM-20K" / "config.json").read_bytes() == cfg


def test_corrupt_download_is_rejected_and_deleted(hub, tmp_path):
    data = b"x" * 50_000
    hub.add("r/x", "w.bin", data)
    hub.corrupt.add("r/x/w.bin")
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError, match="corrupt.*sha256"):
        download(f"{hub.origin}/r/x/resolve/main/w.bin", dest, origin=hub.origin)
    assert not dest.exists() and not list(tmp_path.iterdir())
    # a plain (git) file whose bytes do not match its ETag is rejected too
    hub.add("r/x", "c.json", b'{"a": 1}', lfs=False)
    hub.corrupt.add("r/x/c.json")
    with pytest.raises(DownloadError, match="git blob sha1"):
        download(f"{hub.origin}/r/x/resolve/main/c.json", tmp_path / "c.json", origin=hub.origin)
    # and a recorded sha256 that the origin contradicts is refused before any byte is fetched
    hub.corrupt.clear()
    with pytest.raises(DownloadError, match="differs from the expected"):
        download(f"{hub.origin}/r/x/resolve/main/w.bin", dest, origin=hub.origin, expected_sha256="0" * 64)


def test_downloads_only_from_the_configured_origin(hub, tmp_path):
    hub.add("r/x", "w.bin", b"abc" * 100)
    with pytest.raises(DownloadError, match="not under the configured origin"):
        download("http://127.0.0.1:1/r/x/resolve/main/w.bin", tmp_path / "w", origin=hub.origin)
    hub.redirect_to = "http://127.0.0.2:9"  # plain-http redirect to another host
    with pytest.raises(DownloadError, match="refusing redirect"):
        download(f"{hub.origin}/r/x/resolve/main/w.bin", tmp_path / "w", origin=hub.origin)
    assert not (tmp_path / "w").exists()


def test_missing_file_says_not_found(hub, tmp_path):
    with pytest.raises(DownloadError, match="not found"):
        download(f"{hub.origin}/r/x/resolve/main/nope.bin", tmp_path / "n", origin=hub.origin)


def test_setup_refuses_without_licence_acceptance(hub, home, monkeypatch, capsys):
    cfg, st = _weights_bytes()
    hub.add(assets.WEIGHTS_REPO, "config.json", cfg, lfs=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    assert cli.main(["setup", "--origin", hub.origin]) == 1
    err = capsys.readouterr().err
    assert "CC BY-NC 4.0" in err and "--accept-licences" in err
    assert hub.requests == [] and not (home / "LAM-20K").exists()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info, None


@pytest.mark.parametrize(
    "bad, why",
    [
        (_file("/etc/evil", b"x"), "absolute path"),
        (_file("flame_assets/../../evil", b"x"), "'..'"),
        (_link("flame_assets/l", "../../../etc/passwd"), "outside the archive"),
        (_link("flame_assets/l", "/etc/passwd"), "absolute path"),
        (_link("flame_assets/h", "../../x", hard=True), "outside the archive"),
        (_device("flame_assets/dev"), "special file"),
        (_file("C:/windows/evil", b"x"), "absolute path"),
    ],
)
def test_malicious_tar_is_refused_before_writing_anything(tmp_path, bad, why):
    data = _tar([_file("flame_assets/flame/ok.txt", b"fine"), bad])
    (tmp_path / "a.tar").write_bytes(data)
    dest = tmp_path / "out"
    with pytest.raises(archive.UnsafeArchiveError, match=why):
        archive.safe_extract(tmp_path / "a.tar", dest)
    assert not dest.exists() or not any(dest.rglob("*"))


def test_tar_with_inside_links_extracts_files_only(tmp_path):
    data = _tar([_file("a/b/c.txt", b"hello"), _link("a/l", "b/c.txt"), _file("./a/d.txt", b"d")])
    (tmp_path / "a.tar").write_bytes(data)
    written = archive.safe_extract(tmp_path / "a.tar", tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["a/b/c.txt", "a/d.txt"]
    assert (tmp_path / "out/a/b/c.txt").read_bytes() == b"hello"
    assert not (tmp_path / "out/a/l").exists()


def test_not_a_tar_is_a_clear_error(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"no tar here")
    with pytest.raises(BadInputError, match="not a readable tar"):
        archive.safe_extract(tmp_path / "x.tar", tmp_path / "o")


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_truncated_tar_is_a_clear_error(tmp_path, gzipped):
    payload = np.random.default_rng(0).bytes(400_000)  # incompressible: the cut lands inside the data
    data = _tar([_file("flame_assets/a.bin", payload), _file("flame_assets/b.bin", payload)])
    if gzipped:
        data = gzip.compress(data)
    (tmp_path / "a.tar").write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(BadInputError, match=r"a\.tar: the archive is damaged .*download it again"):
        archive.safe_extract(tmp_path / "a.tar", tmp_path / "o")


def test_lam_assets_archive_is_fetched_extracted_and_registered(hub, home, capsys):
    pkl, emb = b"pretend flame pickle", b"pretend embedding"
    hub.add(assets.ASSETS_REPO, assets.ASSETS_ARCHIVE, _tar([
        _file("flame_assets/flame/flame2023.pkl", pkl),
        _file("flame_assets/flame/landmark_embedding_with_eyes.npy", emb),
        _file("flame_assets/flame/head_template_mesh.obj", b"v 0 0 0"),
    ]))
    assert cli.main(["setup", "--accept-licences", "--lam-assets", "--weights", str(GOLDEN), "--origin", hub.origin]) == 0
    capsys.readouterr()
    assert assets.installed_flame_file() == home / "lam_assets/flame_assets/flame/flame2023.pkl"
    assert assets.installed_flame_file().read_bytes() == pkl
    assert assets.installed_landmark_embedding().read_bytes() == emb
    assert assets.installed_weights_dir() == GOLDEN
    assert not (home / "downloads" / assets.ASSETS_ARCHIVE).exists()
    manifest = json.loads((home / "assets.json").read_text())
    assert set(manifest["licences"]) == {"flame"}  # local weights need no acceptance here
    assert cli.main(["doctor"]) == 0
    assert "ready to create avatars" in capsys.readouterr().out


def test_malicious_assets_archive_registers_nothing(hub, home, capsys):
    hub.add(assets.ASSETS_REPO, assets.ASSETS_ARCHIVE, _tar([
        _file("flame_assets/flame/flame2023.pkl", b"x"), _link("flame_assets/evil", "../../../../tmp/x"),
    ]))
    assert cli.main(["setup", "--accept-licences", "--lam-assets", "--weights", str(GOLDEN), "--origin", hub.origin]) == 1
    assert "points outside the archive" in capsys.readouterr().err
    assert assets.installed_flame_file() is None
    assert not (home / "lam_assets").exists()


def test_local_weights_folder_checks(tmp_path, home, capsys):
    assert cli.main(["setup", "--weights", str(tmp_path / "nope")]) == 1
    assert "weights folder not found" in capsys.readouterr().err
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")
    (tmp_path / "w" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     ")
    assert cli.main(["setup", "--weights", str(tmp_path / "w")]) == 1
    assert "not a valid safetensors file" in capsys.readouterr().err
    assert cli.main(["setup", "--weights", str(GOLDEN)]) == 0
    assert "used in place" in capsys.readouterr().out
    assert assets.installed_weights_dir() == GOLDEN
    assert not assets.checkpoint_has_flame(GOLDEN)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_interactive_licence_prompt(hub, home, monkeypatch, capsys):
    cfg, st = _weights_bytes()
    hub.add(assets.WEIGHTS_REPO, "config.json", cfg, lfs=False)
    hub.add(assets.WEIGHTS_REPO, "model.safetensors", st)
    monkeypatch.setattr("sys.stdin", _Terminal("no\n"))
    assert cli.main(["setup", "--origin", hub.origin]) == 1
    assert "licences were not accepted, nothing was downloaded" in capsys.readouterr().err
    assert hub.requests == []
    monkeypatch.setattr("sys.stdin", _Terminal("yes\n"))
    assert cli.main(["setup", "--origin", hub.origin]) == 0
    assert assets.installed_weights_dir() == home / "LAM-20K"


def test_local_flame_and_embedding_files_are_checked(tmp_path, home, capsys):
    junk = tmp_path / "flame2023.pkl"
    junk.write_text("not a pickle")
    assert cli.main(["setup", "--flame", str(junk)]) == 1
    assert "not a FLAME model" in capsys.readouterr().err
    assert cli.main(["setup", "--landmark-embedding", str(tmp_path / "missing.npy")]) == 1
    assert "landmark embedding not found" in capsys.readouterr().err
    assert assets.installed_flame_file() is None and assets.installed_landmark_embedding() is None


def test_setup_through_the_server_with_progress(hub, home):
    """The add-on's first-use flow: the same setup as a protocol job."""
    import os
    import sys

    from backend.core.client import BackendClient, BackendError

    cfg, st = _weights_bytes()
    hub.add(assets.WEIGHTS_REPO, "config.json", cfg, lfs=False)
    hub.add(assets.WEIGHTS_REPO, "model.safetensors", st)
    hub.add(assets.ASSETS_REPO, assets.ASSETS_ARCHIVE, _tar([_file("flame_assets/flame/flame2023.pkl", b"p")]))
    repo = Path(__file__).resolve().parents[1]
    client = BackendClient(sys.executable, repo, env={**os.environ, "LAM_HEAD_HOME": str(home)}).start()
    try:
        with pytest.raises(BackendError) as ei:
            client.call("setup", {"origin": hub.origin}, timeout=60)
        assert ei.value.code == "licence_not_accepted" and "CC BY-NC 4.0" in str(ei.value)
        assert hub.requests == []
        events = []
        res = client.call("setup", {"origin": hub.origin, "accept_licences": True}, on_event=events.append, timeout=120)
        assert res["ready"] is False and any("sha256" in line for line in res["lines"])
        assert any(e["event"] == "progress" and e["stage"] == "model.safetensors" for e in events)
        res = client.call("setup", {"origin": hub.origin, "accept_licences": True, "lam_assets": True}, timeout=120)
        assert res["ready"] is True
        report = client.call("doctor", timeout=60)
        assert report["ready"] is True and "CC BY-NC 4.0" in report["licences"]["weights"]
        with pytest.raises(BackendError) as ei:
            client.call("setup", {"accept_licences": "yes"}, timeout=60)
        assert ei.value.code == "bad_params"
    finally:
        client.kill()
