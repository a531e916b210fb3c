"""Resumable, verified HTTP downloads (standard library only).

A download goes to ``<dest>.part`` and is renamed over ``dest`` only after its
size and hash checked out. An interrupted transfer keeps the ``.part`` (with a
``.part.json`` note of what it is a part of) and the next attempt continues it
with an HTTP Range request. What is verified:

* size: ``X-Linked-Size`` (Hugging Face LFS files) or ``Content-Length`` /
  ``Content-Range`` of the origin's answer, or the caller's expected size;
* content: sha256 from the caller (a recorded manifest) or the origin's
  ``X-Linked-Etag`` (the LFS object's sha256); for plain git files a 40-hex
  ``ETag`` is the git blob id, sha1("blob <size>\\0" + bytes), checked too.

Requests go only to the configured origin. Redirects from it (Hugging Face
sends LFS files to its CDN) are followed over https, or to the origin's own
host (same scheme, any port: a local mirror's file server); the bytes must then
match the size/hash the origin itself declared. A token (``HF_TOKEN``) is sent
as ``Authorization: Bearer`` to the configured origin only, never to a redirect
target on another origin, and never appears in a message or a log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import CancelToken, LamHeadError

CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
Progress = Callable[[str, float, str], None]


class DownloadError(LamHeadError):
    code = "download_failed"


@dataclass
class RemoteInfo:
    """What the origin says about a file before we fetch it."""

    url: str  # final URL (after redirects) to fetch bytes from
    size: int | None
    sha256: str | None
    git_sha1: str | None


@dataclass
class DownloadResult:
    path: Path
    size: int
    sha256: str
    verified: str  # human-readable: what was checked against what


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None  # we follow redirects ourselves, checking each target


_OPENER = urllib.request.build_opener(_NoRedirect)


def _origin(url: str) -> tuple[str, str]:
    p = urllib.parse.urlsplit(url)
    return p.scheme.lower(), p.netloc.lower()


def _host(url: str) -> tuple[str, str | None]:
    p = urllib.parse.urlsplit(url)
    return p.scheme.lower(), p.hostname


def _allowed_redirect(origin: str, target: str) -> bool:
    scheme, _ = _origin(target)
    return scheme == "https" or _host(target) == _host(origin)


def _strip_etag(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"').lower()


def _request(url: str, origin: str, method: str = "GET", headers: dict | None = None, timeout: float = 30.0,
             token: str | None = None):
    """Open ``url`` following at most 5 checked redirects; returns (response, first_headers).
    ``token`` goes only to URLs on the configured origin."""
    first_headers = None
    for _ in range(6):
        sent = {"User-Agent": "lam-head", **(headers or {})}
        if token and _origin(url) == _origin(origin):
            sent["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, method=method, headers=sent)
        try:
            resp = _OPENER.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308):
                if first_headers is None:
                    first_headers = exc.headers
                loc = exc.headers.get("Location")
                exc.close()
                if not loc:
                    raise DownloadError(f"{url}: redirect without a Location") from None
                target = urllib.parse.urljoin(url, loc)
                if method == "HEAD" and _origin(target) != _origin(origin):
                    return None, first_headers  # the origin's own answer says what we need
                if not _allowed_redirect(origin, target):
                    raise DownloadError(f"{url}: refusing redirect to {target} (not https, not the configured origin)") from None
                url = target
                continue
            return exc, first_headers or exc.headers
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"cannot reach {url}: {reason}; check the network, or set HF_ENDPOINT (or --origin) "
                                "to a Hugging Face mirror") from None
        return resp, first_headers or resp.headers
    raise DownloadError(f"{url}: too many redirects")


def get_json(url: str, *, origin: str, token: str | None = None, timeout: float = 30.0) -> tuple[int, object]:
    """(HTTP status, parsed JSON body or None) of a GET on the configured origin (the hub's API)."""
    if _origin(url) != _origin(origin):
        raise DownloadError(f"refusing to query {url}: not under the configured origin {origin}")
    resp, _ = _request(url, origin, "GET", headers={"Accept": "application/json"}, timeout=timeout, token=token)
    status = 200 if resp is None else (getattr(resp, "status", None) or resp.getcode())
    if resp is None:
        return 502, None
    try:
        body = resp.read(1 << 20) if status < 400 else b""
    except (OSError, ValueError):
        body = b""
    finally:
        resp.close()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


def _expected_from_headers(headers) -> tuple[int | None, str | None, str | None]:
    size = headers.get("X-Linked-Size")
    sha = _strip_etag(headers.get("X-Linked-Etag"))
    etag = _strip_etag(headers.get("ETag"))
    sha256 = sha if sha and _HEX64.match(sha) else (etag if etag and _HEX64.match(etag) else None)
    git_sha1 = etag if (etag and _HEX40.match(etag) and not sha) else None
    return (int(size) if size and size.isdigit() else None), sha256, git_sha1


def _hash_file(path: Path, cancel: CancelToken | None = None) -> tuple[str, str, int]:
    """(sha256, git blob sha1, size) of a file."""
    size = path.stat().st_size
    h = hashlib.sha256()
    g = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            if cancel is not None:
                cancel.check()
            h.update(chunk)
            g.update(chunk)
    return h.hexdigest(), g.hexdigest(), size


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    origin: str,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    retries: int = 2,
    timeout: float = 30.0,
    token: str | None = None,
    expected_commit: str | None = None,
) -> DownloadResult:
    """Fetch ``url`` (which must lie under ``origin``) into ``dest``, resuming a
    previous ``dest.part``; verify; rename into place. Raises DownloadError.

    ``token``: sent to the origin only (see the module doc). ``expected_commit``: the
    repository commit the URL is pinned to; an origin answering with another
    ``X-Repo-Commit`` is refused."""
    dest = Path(dest)
    if _origin(url) != _origin(origin):
        raise DownloadError(f"refusing to download {url}: not under the configured origin {origin}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    note = dest.with_name(dest.name + ".part.json")
    attempt = 0
    while True:
        try:
            return _download_once(url, dest, part, note, origin, expected_size, expected_sha256, progress, cancel, timeout,
                                  token, expected_commit)
        except _Transient as exc:
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"download of {url} interrupted ({exc}); {part.stat().st_size if part.exists() else 0} bytes kept "
                    f"in {part}: run the same command again to resume"
                ) from None
            time.sleep(min(5.0, 0.5 * attempt))


class _Transient(Exception):
    """A network hiccup worth retrying (the .part is kept)."""


def _download_once(url, dest, part, note, origin, expected_size, expected_sha256, progress, cancel, timeout,
                   token=None, expected_commit=None):
    name = dest.name
    # What the origin declares (sizes/hashes), from the first answer of a HEAD.
    head, first = _request(url, origin, "HEAD", timeout=timeout, token=token)
    status = 200 if head is None else (getattr(head, "status", None) or head.getcode())
    if head is not None:
        head.close()
    if status == 404:
        raise DownloadError(f"{url}: not found (404); check the repository name and the --origin setting")
    if status in (401, 403):
        raise DownloadError(f"{url}: access denied ({status}); the repository may need you to log in or accept its terms on the website")
    if status >= 400:
        raise _Transient(f"HTTP {status}")
    commit = (first.get("X-Repo-Commit") or "").strip().lower()
    if expected_commit and commit and commit != expected_commit.lower():
        raise DownloadError(f"{name}: the origin serves commit {commit}, not the pinned {expected_commit}; refusing")
    size_h, sha_h, git_h = _expected_from_headers(first)
    if size_h is None and head is not None:
        cl = (head.headers.get("Content-Length") or "").strip()
        size_h = int(cl) if cl.isdigit() else None
    want_size = expected_size if expected_size is not None else size_h
    want_sha = (expected_sha256 or sha_h or "").lower() or None
    if expected_size is not None and size_h is not None and expected_size != size_h:
        raise DownloadError(f"{name}: the origin offers {size_h} bytes but {expected_size} were expected; refusing (wrong file version?)")
    if expected_sha256 and sha_h and expected_sha256.lower() != sha_h:
        raise DownloadError(f"{name}: the origin's sha256 {sha_h} differs from the expected {expected_sha256}; refusing")
    identity = {"url": url, "size": want_size, "sha256": want_sha, "git_sha1": git_h}

    # Resume only a .part of the very same file.
    have = 0
    if part.exists():
        try:
            same = json.loads(note.read_text()) == identity
        except (OSError, ValueError):
            same = False
        have = part.stat().st_size if same else 0
        if not same or (want_size is not None and have > want_size):
            part.unlink()
            have = 0
    note.write_text(json.dumps(identity))

    if want_size is None or have < want_size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        resp, _ = _request(url, origin, "GET", headers=headers, timeout=timeout, token=token)
        status = getattr(resp, "status", None) or resp.getcode()
        try:
            if status == 416 and have:
                pass  # nothing left to fetch; verify below
            elif status >= 400:
                raise _Transient(f"HTTP {status}") if status >= 500 else DownloadError(f"{url}: HTTP {status}")
            else:
                if status == 200 and have:
                    have = 0  # server ignored the Range: start over
                total = want_size
                if total is None:
                    cl = (resp.headers.get("Content-Length") or "").strip()
                    total = have + int(cl) if cl.isdigit() else None
                if status == 206:
                    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != have:
                        raise DownloadError(f"{url}: the server resumed at the wrong offset ({resp.headers.get('Content-Range')})")
                with open(part, "ab" if have else "wb") as fh:
                    done = have
                    last = 0.0
                    while True:
                        if cancel is not None:
                            cancel.check()
                        try:
                            chunk = resp.read(CHUNK)
                        except (OSError, ValueError) as exc:  # incl. http.client.IncompleteRead
                            raise _Transient(str(exc) or type(exc).__name__) from None
                        if not chunk:
                            break
                        fh.write(chunk)
                        done += len(chunk)
                        now = time.monotonic()
                        if progress is not None and (now - last > 0.2):
                            last = now
                            progress(name, done / total if total else 0.0, _mb(done, total))
        finally:
            resp.close()

    got = part.stat().st_size if part.exists() else 0
    if want_size is not None and got < want_size:
        raise _Transient(f"connection closed after {got} of {want_size} bytes")
    if progress is not None:
        progress(name, 1.0, "verifying")
    sha, git_sha1, size = _hash_file(part, cancel)
    checks = []
    problem = None
    if want_size is not None:
        checks.append(f"size {want_size}")
        if size != want_size:
            problem = f"size {size} != expected {want_size}"
    if want_sha:
        checks.append("sha256 " + ("(recorded)" if expected_sha256 else "(origin's X-Linked-Etag)"))
        if sha != want_sha:
            problem = f"sha256 {sha} != expected {want_sha}"
    elif git_h:
        checks.append("git blob sha1 (origin's ETag)")
        if git_sha1 != git_h:
            problem = f"git blob sha1 {git_sha1} != ETag {git_h}"
    if problem:
        part.unlink(missing_ok=True)
        note.unlink(missing_ok=True)
        raise DownloadError(f"{name}: downloaded data is corrupt ({problem}); it was deleted, run the command again")
    os.replace(part, dest)
    note.unlink(missing_ok=True)
    verified = ", ".join(checks) if checks else "nothing (the origin declared no size or hash)"
    return DownloadResult(dest, size, sha, verified)


def _mb(done: int, total: int | None) -> str:
    if total:
        return f"{done / 1e6:.1f} / {total / 1e6:.1f} MB"
    return f"{done / 1e6:.1f} MB"
