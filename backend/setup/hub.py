"""Hugging Face hub conventions, on top of our verified downloader (standard library only).

* ``HF_ENDPOINT``: a mirror's base URL in place of ``https://huggingface.co``
  (``--origin`` / ``$LAM_HEAD_ORIGIN`` take precedence).
* ``HF_TOKEN``: sent as ``Authorization: Bearer`` to that endpoint only (see download.py).
* ``HF_HUB_OFFLINE=1``: no request at all; only what is on disk is used.
* Pinned commits: files are fetched from ``{endpoint}/{repo}/resolve/<commit>/<file>``; the commit
  comes from the hub API (``GET {endpoint}/api/models/{repo}/revision/main`` -> ``sha``), else the
  ``X-Repo-Commit`` header of a ``resolve/main`` answer, and is recorded in ``assets.json``.
* Existing downloads: a Hugging Face cache snapshot
  (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
  ``~/.cache/huggingface/hub``; ``models--<org>--<name>/snapshots/<commit>/...``) and the official
  LAM repository's folders (``lam-head setup --from-lam-repo DIR``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
# The official LAM repository (github.com/aigc3d/LAM) after its asset download steps.
LAM_REPO_WEIGHTS = "model_zoo/lam_models/releases/lam/lam-20k/step_045500"
LAM_REPO_FLAME = "model_zoo/human_parametric_models/flame_assets/flame"

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "true", "yes", "on"}


def endpoint(explicit: str | None = None) -> str:
    """Where to download from: ``explicit`` (``--origin``), ``$LAM_HEAD_ORIGIN``, ``$HF_ENDPOINT``, huggingface.co."""
    for value in (explicit, os.environ.get("LAM_HEAD_ORIGIN"), os.environ.get("HF_ENDPOINT")):
        if value and value.strip():
            return value.strip().rstrip("/")
    return DEFAULT_ENDPOINT


def token() -> str | None:
    """``$HF_TOKEN`` (None when unset or empty). Never printed."""
    value = (os.environ.get("HF_TOKEN") or "").strip()
    return value or None


def offline() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in _TRUE


def cache_dir() -> Path:
    """The Hugging Face hub cache folder (whether or not it exists)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def is_commit(value: str | None) -> bool:
    return bool(value) and bool(_COMMIT.match(value))


def file_url(base: str, repo: str, revision: str, name: str) -> str:
    return f"{base.rstrip('/')}/{repo}/resolve/{revision}/{name}"


def cached_snapshot(repo: str, files: tuple[str, ...], revision: str | None = None) -> tuple[Path, str] | None:
    """(snapshot folder, commit) of a Hugging Face cache snapshot of ``repo`` that holds all ``files``:
    the pinned ``revision`` first, then what ``refs/main`` names, then the newest other snapshot."""
    base = cache_dir() / f"models--{repo.replace('/', '--')}"
    snapshots = base / "snapshots"
    if not snapshots.is_dir():
        return None
    order: list[str] = []
    if revision:
        order.append(revision)
    try:
        order.append((base / "refs" / "main").read_text().strip())
    except OSError:
        pass
    try:
        others = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        others = []
    order += [p.name for p in others]
    seen = set()
    for commit in order:
        if not commit or commit in seen or "/" in commit or commit.startswith("."):
            continue
        seen.add(commit)
        folder = snapshots / commit
        if all((folder / f).is_file() for f in files):
            return folder, commit
    return None


def resolve_commit(base: str, repo: str, probe: str, *, timeout: float = 30.0) -> str | None:
    """The commit ``main`` points at: the hub API, else the ``X-Repo-Commit`` of the ``resolve/main``
    answer for the file ``probe`` (mirrors without the API), else None (files then come from
    ``resolve/main``, unpinned)."""
    from .download import _request, get_json

    tok = token()
    status, body = get_json(f"{base}/api/models/{repo}/revision/main", origin=base, token=tok, timeout=timeout)
    sha = body.get("sha") if status == 200 and isinstance(body, dict) else None
    if isinstance(sha, str) and is_commit(sha.lower()):
        return sha.lower()
    resp, first = _request(file_url(base, repo, "main", probe), base, "HEAD", timeout=timeout, token=tok)
    if resp is not None:
        resp.close()
    commit = ((first or {}).get("X-Repo-Commit") or "").strip().lower()
    return commit if is_commit(commit) else None
