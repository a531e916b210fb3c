"""Hub conventions: HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, pinned commits, reuse of a Hugging Face
cache snapshot and of the official LAM repository layout, and command 1 (set-up, then create on
the shipped sample portrait) against a local fake hub.

The fake hub is two HTTP servers on 127.0.0.1: the hub (API, ``resolve/<rev>`` with the headers the
real one sends) and a second origin standing in for its LFS CDN, to which LFS files redirect.
Tiny random checkpoints and synthetic FLAME pickles stand in for the real files.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import write_synthetic_flame

from backend import cli
from backend.setup import assets, hub

COMMIT_W = "a" * 39 + "1"
COMMIT_A = "b" * 39 + "2"
TOKEN = "hf_secretTokenValue123"
REPO = Path(__file__).resolve().parents[1]


class _Server:
    def __init__(self, handle):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                owner.requests.append((self.command, self.path, self.headers.get("Authorization")))
                handle(self, head=True)

            def do_GET(self):
                owner.requests.append((self.command, self.path, self.headers.get("Authorization")))
                handle(self, head=False)

        self.requests: list[tuple[str, str, str | None]] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _send(h, status: int, headers: dict, body: bytes = b"", head: bool = False) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if body and not head:
        h.wfile.write(body)


class FakeHub:
    """``/api/models/<repo>/revision/main`` -> {"sha"}; ``/<repo>/resolve/<main|commit>/<file>``:
    git files with ``ETag`` (git blob sha1), LFS files as a 302 to the CDN origin with
    ``X-Linked-Size`` / ``X-Linked-Etag`` (sha256); every answer carries ``X-Repo-Commit``."""

    def __init__(self):
        self.repos: dict[str, tuple[str, dict[str, tuple[bytes, bool]]]] = {}  # repo -> (commit, name -> (data, lfs))
        self.blobs: dict[str, bytes] = {}  # sha256 -> data (the CDN)
        self.cdn = _Server(self._cdn)
        self.hub = _Server(self._hub)
        self.origin = self.hub.origin

    def add(self, repo: str, commit: str, name: str, data: bytes, lfs: bool = True) -> None:
        self.repos.setdefault(repo, (commit, {}))[1][name] = (data, lfs)
        if lfs:
            self.blobs[hashlib.sha256(data).hexdigest()] = data

    def _hub(self, h, head):
        path = h.path
        if path.startswith("/api/models/") and path.endswith("/revision/main"):
            repo = path[len("/api/models/"):-len("/revision/main")]
            if repo not in self.repos:
                return _send(h, 404, {"Content-Type": "application/json"}, b'{"error": "Repository not found"}', head)
            body = json.dumps({"id": repo, "sha": self.repos[repo][0]}).encode()
            return _send(h, 200, {"Content-Type": "application/json"}, body, head)
        if "/resolve/" not in path:
            return _send(h, 404, {}, b"", head)
        repo, rest = path.lstrip("/").split("/resolve/", 1)
        rev, name = rest.split("/", 1)
        if repo not in self.repos or rev not in ("main", self.repos[repo][0]) or name not in self.repos[repo][1]:
            return _send(h, 404, {"X-Error-Code": "EntryNotFound"}, b"", head)
        commit = self.repos[repo][0]
        data, lfs = self.repos[repo][1][name]
        if lfs:
            sha = hashlib.sha256(data).hexdigest()
            return _send(h, 302, {"Location": f"{self.cdn.origin}/lfs/{sha}", "X-Repo-Commit": commit,
                                  "X-Linked-Size": str(len(data)), "X-Linked-Etag": f'"{sha}"', "ETag": f'"{sha}"'}, b"", head)
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return _send(h, 200, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, data, head)

    def _cdn(self, h, head):
        data = self.blobs.get(h.path.rsplit("/", 1)[-1]) if h.path.startswith("/lfs/") else None
        if data is None:
            return _send(h, 404, {}, b"", head)
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            return _send(h, 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, data[start:], head)
        return _send(h, 200, {}, data, head)

    def close(self):
        self.hub.close()
        self.cdn.close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Hermetic environment: asset home, HF home (empty cache), no hub variables from the outside."""
    for k in ("LAM_HEAD_ORIGIN", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "lam-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Tiny weights, a synthetic FLAME pickle and landmark embedding, and LAM_assets.tar holding them."""
    root = tmp_path_factory.mktemp("hubkit")
    weights = make_tiny_weights_dir(root)
    flame = write_synthetic_flame(root / "flame2023.pkl")
    from backend.flame import load_flame

    n_faces = load_flame(flame).faces.shape[0]
    rng = np.random.default_rng(1)
    emb = root / assets.EMBEDDING_NAME
    np.save(emb, {"full_lmk_faces_idx": rng.choice(n_faces, 68, replace=False)[None].astype(np.int64),
                  "full_lmk_bary_coords": rng.dirichlet([2.0, 2.0, 2.0], size=68)[None]}, allow_pickle=True)

    def tar(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    flame_dir = "flame_assets/flame/"
    return {
        "weights": weights, "flame": flame, "embedding": emb,
        "config": (weights / "config.json").read_bytes(), "safetensors": (weights / "model.safetensors").read_bytes(),
        "tar": tar({flame_dir + "flame2023.pkl": flame.read_bytes(), flame_dir + assets.EMBEDDING_NAME: emb.read_bytes()}),
        "tar_flame_only": tar({flame_dir + "flame2023.pkl": flame.read_bytes()}),
    }


@pytest.fixture
def fake_hub(kit):
    h = FakeHub()
    h.add(assets.WEIGHTS_REPO, COMMIT_W, "config.json", kit["config"], lfs=False)
    h.add(assets.WEIGHTS_REPO, COMMIT_W, "model.safetensors", kit["safetensors"])
    h.add(assets.ASSETS_REPO, COMMIT_A, assets.ASSETS_ARCHIVE, kit["tar"])
    yield h
    h.close()


def _manifest(env) -> dict:
    return json.loads((env / "lam-home" / "assets.json").read_text())


def test_endpoint_token_offline_and_cache_conventions(monkeypatch, env):
    assert hub.endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert hub.endpoint() == "https://hf-mirror.example"
    monkeypatch.setenv("LAM_HEAD_ORIGIN", "https://ours.example")
    assert hub.endpoint() == "https://ours.example" and hub.endpoint("http://cli.example") == "http://cli.example"
    assert hub.token() is None
    monkeypatch.setenv("HF_TOKEN", " tok ")
    assert hub.token() == "tok"
    assert not hub.offline()
    for v in ("1", "true", "YES", "on"):
        monkeypatch.setenv("HF_HUB_OFFLINE", v)
        assert hub.offline()
    assert hub.cache_dir() == env / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(env / "elsewhere"))
    assert hub.cache_dir() == env / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(env / "xdg"))
    assert hub.cache_dir() == env / "xdg" / "huggingface" / "hub"


def test_download_once_pinned_with_token_only_to_the_endpoint_then_reuse(fake_hub, env, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.origin)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["setup", "--accept-licences", "--lam-assets"]) == 0
    out, err = capsys.readouterr()
    assert "sha256 (origin's X-Linked-Etag)" in out and "git blob sha1 (origin's ETag)" in out
    # pinned: the commit came from the API, every file from resolve/<commit>, recorded in assets.json
    assert ("GET", f"/api/models/{assets.WEIGHTS_REPO}/revision/main", f"Bearer {TOKEN}") in fake_hub.hub.requests
    resolves = [p for _, p, _ in fake_hub.hub.requests if "/resolve/" in p]
    assert resolves and all(f"/resolve/{COMMIT_W}/" in p or f"/resolve/{COMMIT_A}/" in p for p in resolves)
    manifest = _manifest(env)
    assert manifest["revisions"] == {assets.WEIGHTS_REPO: COMMIT_W, assets.ASSETS_REPO: COMMIT_A}
    assert manifest["weights"]["revision"] == COMMIT_W and manifest["weights"]["source_kind"] == "download"
    assert manifest["flame"]["revision"] == COMMIT_A
    # the token went to the endpoint with every request, never to the CDN origin the LFS files redirect to
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in fake_hub.hub.requests)
    assert fake_hub.cdn.requests and all(auth is None for _, _, auth in fake_hub.cdn.requests)
    assert TOKEN not in out + err and TOKEN not in (env / "lam-home" / "assets.json").read_text()
    assert (env / "lam-home" / "LAM-20K" / "model.safetensors").read_bytes() == fake_hub.blobs[
        hashlib.sha256(fake_hub.repos[assets.WEIGHTS_REPO][1]["model.safetensors"][0]).hexdigest()]

    # a second run reuses everything: not one request
    n_hub, n_cdn = len(fake_hub.hub.requests), len(fake_hub.cdn.requests)
    assert cli.main(["setup", "--accept-licences", "--lam-assets"]) == 0
    out = capsys.readouterr().out
    assert "already installed" in out and "LAM assets: already installed" in out
    assert (len(fake_hub.hub.requests), len(fake_hub.cdn.requests)) == (n_hub, n_cdn)

    # doctor names the source of each asset, says where downloads come from, never shows the token
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"source (download): downloaded from {fake_hub.origin}/{assets.WEIGHTS_REPO} at commit {COMMIT_W}" in out
    assert f"{assets.ASSETS_REPO} ({assets.ASSETS_ARCHIVE}) at commit {COMMIT_A}" in out
    assert f"hub: {fake_hub.origin}  (HF_TOKEN set)" in out and TOKEN not in out


def test_a_mirror_serving_another_commit_is_refused(fake_hub, env, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.origin)
    lam_home = env / "lam-home"
    lam_home.mkdir()
    (lam_home / "assets.json").write_text(json.dumps({"revisions": {assets.WEIGHTS_REPO: "c" * 40}}))
    assert cli.main(["setup", "--accept-licences"]) == 1
    assert "not found (404)" in capsys.readouterr().err  # resolve/<pinned> of a commit the mirror does not have
    assert assets.installed_weights_dir() is None


def _hf_cache_snapshot(cache: Path, repo: str, commit: str, files: dict[str, bytes]) -> Path:
    """The layout huggingface_hub writes: blobs/<hash>, snapshots/<commit>/<name> -> ../../blobs/<hash>, refs/main."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (base / "blobs" / blob).write_bytes(data)
        (snap / name).symlink_to(Path("..", "..", "blobs", blob))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return snap


@pytest.mark.parametrize("where", ["HF_HOME", "HF_HUB_CACHE"])
def test_hugging_face_cache_snapshot_is_reused_without_any_request(fake_hub, kit, env, monkeypatch, capsys, where):
    cache = env / "hf" / "hub" if where == "HF_HOME" else env / "custom-cache"
    if where == "HF_HUB_CACHE":
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snap_w = _hf_cache_snapshot(cache, assets.WEIGHTS_REPO, COMMIT_W,
                                {"config.json": kit["config"], "model.safetensors": kit["safetensors"]})
    _hf_cache_snapshot(cache, assets.ASSETS_REPO, COMMIT_A, {assets.ASSETS_ARCHIVE: kit["tar"]})
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.origin)
    assert cli.main(["setup", "--lam-assets"]) == 0  # nothing downloaded: no licence question either
    out = capsys.readouterr().out
    assert "reused the Hugging Face cache snapshot" in out
    assert fake_hub.hub.requests == [] and fake_hub.cdn.requests == []
    assert assets.installed_weights_dir() == snap_w  # in place, not copied
    assert not (env / "lam-home" / "LAM-20K").exists()
    assert assets.installed_flame_file().read_bytes() == kit["flame"].read_bytes()
    assert (cache / f"models--{assets.ASSETS_REPO.replace('/', '--')}" / "snapshots" / COMMIT_A / assets.ASSETS_ARCHIVE).is_file()
    manifest = _manifest(env)
    assert manifest["weights"]["source_kind"] == "hf-cache" and manifest["revisions"][assets.WEIGHTS_REPO] == COMMIT_W
    assert "all of the config's layout" in manifest["weights"]["verified"]
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"source (hf-cache): Hugging Face cache {snap_w} ({assets.WEIGHTS_REPO} at commit {COMMIT_W})" in out


def test_a_broken_cache_snapshot_is_refused_with_the_reason(kit, env, capsys):
    bad = kit["safetensors"][:8] + kit["safetensors"][8:].replace(b"encoder.model.cls_token", b"encoder.model.xxx_token", 1)
    _hf_cache_snapshot(env / "hf" / "hub", assets.WEIGHTS_REPO, COMMIT_W, {"config.json": kit["config"], "model.safetensors": bad})
    assert cli.main(["setup", "--accept-licences"]) == 1
    err = capsys.readouterr().err
    assert "does not hold the LAM network its config.json describes" in err and "encoder.model.cls_token" in err
    assert assets.installed_weights_dir() is None


def _lam_repo(root: Path, kit) -> Path:
    w = root / hub.LAM_REPO_WEIGHTS
    w.mkdir(parents=True)
    (w / "config.json").write_bytes(kit["config"])
    (w / "model.safetensors").write_bytes(kit["safetensors"])
    f = root / hub.LAM_REPO_FLAME
    f.mkdir(parents=True)
    (f / "flame2023.pkl").write_bytes(kit["flame"].read_bytes())
    (f / assets.EMBEDDING_NAME).write_bytes(kit["embedding"].read_bytes())
    return root


def test_official_lam_repository_layout_is_verified_and_used_in_place(kit, env, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network needed at all
    repo = _lam_repo(env / "LAM", kit)
    assert cli.main(["setup", "--from-lam-repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "weights: registered" in out and "FLAME: registered" in out and "landmark embedding: registered" in out
    assert assets.installed_weights_dir() == repo / hub.LAM_REPO_WEIGHTS
    assert assets.installed_flame_file() == repo / hub.LAM_REPO_FLAME / "flame2023.pkl"
    assert assets.installed_landmark_embedding() == repo / hub.LAM_REPO_FLAME / assets.EMBEDDING_NAME
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"source (lam-repo): LAM repository {repo} ({hub.LAM_REPO_WEIGHTS})" in out
    assert f"source (lam-repo): LAM repository {repo} ({hub.LAM_REPO_FLAME})" in out
    assert "OFFLINE (HF_HUB_OFFLINE)" in out
    # a FLAME file that is not FLAME is refused before use
    (repo / hub.LAM_REPO_FLAME / "flame2023.pkl").write_bytes(b"not a pickle")
    assert cli.main(["setup", "--from-lam-repo", str(repo)]) == 1
    assert "not a FLAME model" in capsys.readouterr().err
    assert cli.main(["setup", "--from-lam-repo", str(env / "empty")]) == 1
    assert "LAM repository folder not found" in capsys.readouterr().err


def test_offline_run_names_what_is_missing_and_sends_nothing(fake_hub, env, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.origin)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["setup", "--accept-licences", "--lam-assets"]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("asset folder:")]
    assert len(lines) == 1 and lines[0].startswith("lam-head setup: error: ")  # one line
    err = lines[0]
    assert "HF_HUB_OFFLINE is set" in err
    assert f"LAM-20K weights ({assets.WEIGHTS_REPO}: config.json, model.safetensors)" in err
    assert f"({assets.ASSETS_REPO}: {assets.ASSETS_ARCHIVE})" in err and str(env / "hf" / "hub") in err
    assert "--from-lam-repo DIR" in err
    assert fake_hub.hub.requests == [] and fake_hub.cdn.requests == []


def test_unreachable_hub_is_one_line_saying_what_to_do(env, monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert cli.main(["setup", "--accept-licences"]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("asset folder:")]
    assert len(lines) == 1 and "cannot reach" in lines[0] and "HF_ENDPOINT" in lines[0]


@pytest.mark.slow  # a real `create` (mediapipe, FLAME fit, tiny network): ~10-30 s on 2 busy cores
def test_command_one_sets_up_through_the_hub_and_creates_from_the_sample_portrait(fake_hub, env):
    """README command 1 after the environment step, as subprocesses: setup with the licences accepted
    (through HF_ENDPOINT), then `create --sample`."""
    fresh = {k: v for k, v in os.environ.items() if k not in ("LAM_HEAD_ORIGIN", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    run_env = {**fresh, "HF_ENDPOINT": fake_hub.origin, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "backend", "setup", "--accept-licences", "--lam-assets"],
                       cwd=env, env=run_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = env / "avatar.npz"
    r = subprocess.run([sys.executable, "-m", "backend", "create", "--sample", "-o", str(out), "--precision", "fast"],
                       cwd=env, env=run_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    from backend.core.formats.avatar_file import load_avatar

    avatar = load_avatar(out)
    assert avatar.meta["source_image_sha256"] == hashlib.sha256(assets.SAMPLE_PORTRAIT.read_bytes()).hexdigest()
    assert np.isfinite(avatar.xyz).all()


def test_the_sample_portrait_ships_small_with_its_licence():
    assert assets.SAMPLE_PORTRAIT.is_file() and assets.SAMPLE_PORTRAIT.stat().st_size < 150_000
    readme = (assets.SAMPLE_PORTRAIT.parent / "README.md").read_text()
    assert "public domain" in readme and "NASA" in readme
    from PIL import Image

    with Image.open(assets.SAMPLE_PORTRAIT) as im:
        assert im.format == "JPEG" and min(im.size) >= 256
