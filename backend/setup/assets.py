"""Model assets: where they live, how they get there, whether they are usable.

Cache folder: ``$LAM_HEAD_HOME``, else ``$XDG_CACHE_HOME/lam-head``, else
``~/.cache/lam-head``. Layout::

    assets.json                 manifest: what is installed, from where, how verified
    LAM-20K/config.json         downloaded weights (HF 3DAIGC/LAM-20K)
    LAM-20K/model.safetensors
    lam_assets/...              extracted LAM_assets.tar (HF 3DAIGC/LAM-assets)
    flame/<file>                a FLAME model given with --flame (copied)
    lam_template/<name>.zip     the LAM web ZIP given with --lam-template (copied), and
    lam_template/arkit_basis.npz  the ARKit basis derived from it
    downloads/                  .part files of interrupted downloads

Before anything is downloaded, what the user already has is reused, verified
and registered in place (2.4 GB is not copied): a Hugging Face cache snapshot of
``3DAIGC/LAM-20K`` / ``3DAIGC/LAM-assets``, or the official LAM repository's
folders (``--from-lam-repo DIR``), or folders/files given with ``--weights`` /
``--flame``. Downloads come only from the configured endpoint (``--origin``,
``$LAM_HEAD_ORIGIN``, ``$HF_ENDPOINT``, https://huggingface.co), pinned to a
commit (``<endpoint>/<repo>/resolve/<commit>/<file>``, the commit recorded in
``assets.json`` under ``revisions``), and only after the licences were
accepted; ``HF_HUB_OFFLINE=1`` forbids them (see hub.py).

Each manifest entry records ``source`` (words: where it came from) and
``source_kind``: ``download``, ``hf-cache``, ``lam-repo`` or ``local``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.atomic_write import atomic_path
from ..core.errors import BadInputError, CancelToken, LamHeadError, MissingAssetError
from . import hub

DEFAULT_ORIGIN = hub.DEFAULT_ENDPOINT
WEIGHTS_REPO = "3DAIGC/LAM-20K"
ASSETS_REPO = "3DAIGC/LAM-assets"
ASSETS_ARCHIVE = "LAM_assets.tar"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FLAME_NAMES = ("flame2023.pkl", "flame2023_Open.pkl", "flame2023_no_jaw.pkl")
EMBEDDING_NAME = "landmark_embedding_with_eyes.npy"
# The portrait that ships with the backend (NASA, public domain: backend/data/README.md), so that
# a first `lam-head create --sample` and the add-on's first Create need no photo of the user's.
SAMPLE_PORTRAIT = Path(__file__).resolve().parents[1] / "data" / "sample_portrait.jpg"

FIX_WEIGHTS = "lam-head setup --accept-licences  (or: lam-head setup --weights DIR)"
FIX_FLAME = "lam-head setup --accept-licences --lam-assets  (or: lam-head setup --flame FILE)"
FIX_EMBEDDING = "lam-head setup --accept-licences --lam-assets  (or: lam-head setup --landmark-embedding FILE)"
FIX_OFFLINE = "unset HF_HUB_OFFLINE to download, or: lam-head setup --from-lam-repo DIR | --weights DIR | --flame FILE"
FIX_LAM_TEMPLATE = ("lam-head setup --lam-template ZIP  (any LAM web avatar ZIP, e.g. one made by the LAM demo, "
                    "or asset/arkit/p2-1.zip of github.com/aigc3d/LAM_WebRender)")

LICENCES = {
    "weights": (
        "LAM-20K model weights (3DAIGC/LAM-20K): Creative Commons Attribution-NonCommercial 4.0 "
        "(CC BY-NC 4.0), https://creativecommons.org/licenses/by-nc/4.0/ - non-commercial use only."
    ),
    "flame": (
        "FLAME model and LAM assets (3DAIGC/LAM-assets, contains FLAME 2023): the FLAME licence, "
        "https://flame.is.tue.mpg.de/modellicense.html - non-commercial scientific research only. "
        "For commercial use get FLAME 2023 Open (CC BY 4.0) from https://flame.is.tue.mpg.de and "
        "register it with: lam-head setup --flame FILE"
    ),
}

Progress = Callable[[str, float, str], None]


class LicenceNotAccepted(LamHeadError):
    code = "licence_not_accepted"


# -- locations ------------------------------------------------------------------
def home() -> Path:
    """The asset cache folder (not created here)."""
    env = os.environ.get("LAM_HEAD_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lam-head"


def manifest_path() -> Path:
    return home() / "assets.json"


def load_manifest() -> dict:
    try:
        data = json.loads(manifest_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_manifest(data: dict) -> None:
    path = manifest_path()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))


def _record(key: str, entry: dict) -> None:
    data = load_manifest()
    data[key] = {**entry, "installed": _now()}
    save_manifest(data)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- checks ----------------------------------------------------------------------
def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes), stdlib only."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("file too short")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000 or n > path.stat().st_size - 8:
                raise ValueError("header length out of range")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, ValueError, struct.error) as exc:
        raise BadInputError(f"{path}: not a valid safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    return header


def check_weights_dir(folder: str | os.PathLike) -> None:
    """Raise BadInputError unless ``folder`` holds config.json + model.safetensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"weights folder not found: {folder} (it must contain {CONFIG_FILE} and {WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise BadInputError(f"{folder}: no {name} (a weights folder holds {CONFIG_FILE} and {WEIGHTS_FILE}, as in HF {WEIGHTS_REPO})")
    read_config(folder)
    safetensors_header(folder / WEIGHTS_FILE)


def check_weights_keys(folder: str | os.PathLike) -> int:
    """Raise BadInputError unless model.safetensors holds every tensor its config.json implies
    (names and shapes of the official layout, backend/network/layout.py); returns the tensor count.
    Stdlib only: reads the header, not the 2.4 GB of data."""
    from ..network.config import parse_config
    from ..network.layout import state_dict_layout

    folder = Path(folder)
    header = safetensors_header(folder / WEIGHTS_FILE)
    cfg = parse_config(read_config(folder), str(folder / CONFIG_FILE))
    qk_context = any(k.endswith((".attn.norm_added_q.weight", ".attn.norm_added_k.weight")) for k in header)
    missing, wrong = [], []
    for entry in state_dict_layout(cfg, qk_norm_context=qk_context):
        info = header.get(entry.name)
        if not isinstance(info, dict):
            missing.append(entry.name)
        elif tuple(info.get("shape") or ()) != entry.shape:
            wrong.append(f"{entry.name} {info.get('shape')} (config: {list(entry.shape)})")
    if missing or wrong:
        problems = ([f"{len(missing)} missing tensor(s): {', '.join(missing[:3])}"] if missing else []) + (
            [f"{len(wrong)} of another shape: {', '.join(wrong[:3])}"] if wrong else [])
        raise BadInputError(f"{folder / WEIGHTS_FILE} does not hold the LAM network its config.json describes: "
                            + "; ".join(problems))
    return len(header)


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(cfg, dict):
        raise BadInputError(f"{path}: expected a JSON object")
    return cfg


def checkpoint_has_flame(folder: str | os.PathLike) -> bool:
    """Whether the checkpoint carries ``renderer.flame_model.*`` buffers."""
    try:
        keys = safetensors_header(Path(folder) / WEIGHTS_FILE)
    except BadInputError:
        return False
    return any(k.startswith("renderer.flame_model.") for k in keys)


def _weights_ok(folder: Path) -> bool:
    try:
        check_weights_dir(folder)
        return True
    except LamHeadError:
        return False


# -- what is installed ----------------------------------------------------------
def installed_weights_dir() -> Path | None:
    entry = load_manifest().get("weights") or {}
    if entry.get("path") and _weights_ok(Path(entry["path"])):
        return Path(entry["path"])
    default = home() / "LAM-20K"
    return default if _weights_ok(default) else None


def _installed_file(key: str) -> Path | None:
    entry = load_manifest().get(key) or {}
    p = entry.get("path")
    return Path(p) if p and Path(p).is_file() else None


def installed_flame_file() -> Path | None:
    return _installed_file("flame")


def installed_landmark_embedding() -> Path | None:
    return _installed_file("landmark_embedding")


def installed_lam_template() -> Path | None:
    """The registered LAM web ZIP (template of exported ZIPs, source of the ARKit basis)."""
    return _installed_file("lam_template")


def installed_arkit_basis():
    """The ARKit basis for new avatars: derived from the registered LAM template, else the
    one bundled with the backend. Raises BadInputError when the stored one is unreadable."""
    from ..flame import arkit_basis

    entry = load_manifest().get("lam_template") or {}
    basis_file = entry.get("basis")
    if installed_lam_template() is not None and basis_file and Path(basis_file).is_file():
        return arkit_basis.load(basis_file)
    return arkit_basis.bundled()


def _kind(entry: dict) -> str:
    """``source_kind`` of a manifest entry (entries written before it was recorded: from ``source``)."""
    if entry.get("source_kind"):
        return entry["source_kind"]
    src = str(entry.get("source") or "")
    return "local" if src.startswith("local ") else "download"


def status() -> list[dict[str, Any]]:
    """One entry per asset: name, required, present, path, source (words), source_kind (download, hf-cache,
    lam-repo, local, checkpoint), verified, fix, detail."""
    manifest = load_manifest()
    out = []
    wdir = installed_weights_dir()
    w = manifest.get("weights") or {}
    out.append({
        "name": "weights", "required": True, "present": wdir is not None, "path": str(wdir) if wdir else None,
        "source": w.get("source") if wdir else None, "source_kind": _kind(w) if wdir else None,
        "verified": w.get("verified") if wdir else None,
        "fix": None if wdir else FIX_WEIGHTS,
        "detail": "LAM-20K config.json + model.safetensors",
    })
    flame = installed_flame_file()
    in_ckpt = wdir is not None and checkpoint_has_flame(wdir)
    out.append({
        "name": "flame", "required": True, "present": flame is not None or in_ckpt,
        "path": str(flame) if flame else (str(wdir / WEIGHTS_FILE) if in_ckpt else None),
        "source": (manifest.get("flame") or {}).get("source") if flame else ("checkpoint buffers renderer.flame_model.*" if in_ckpt else None),
        "source_kind": _kind(manifest.get("flame") or {}) if flame else ("checkpoint" if in_ckpt else None),
        "verified": (manifest.get("flame") or {}).get("verified") if flame else None,
        "fix": None if (flame or in_ckpt) else FIX_FLAME,
        "detail": "FLAME 2023 model (file, or the buffers inside the checkpoint)",
    })
    emb = installed_landmark_embedding()
    out.append({
        "name": "landmark_embedding", "required": False, "present": emb is not None, "path": str(emb) if emb else None,
        "source": (manifest.get("landmark_embedding") or {}).get("source") if emb else None,
        "source_kind": _kind(manifest.get("landmark_embedding") or {}) if emb else None,
        "verified": (manifest.get("landmark_embedding") or {}).get("verified") if emb else None,
        "fix": None if emb else FIX_EMBEDDING,
        "detail": "FLAME landmark embedding with eyes (optional: without it no FLAME fit runs and the average head shape is used)",
    })
    tpl = installed_lam_template()
    entry = manifest.get("lam_template") or {}
    out.append({
        "name": "lam_template", "required": False, "present": tpl is not None, "path": str(tpl) if tpl else None,
        "source": entry.get("source") if tpl else None, "source_kind": _kind(entry) if tpl else None,
        "verified": entry.get("verified") if tpl else None,
        "fix": None if tpl else FIX_LAM_TEMPLATE,
        "detail": ("LAM web ZIP template: the skeleton, animations and ARKit targets of exported LAM ZIPs and the ARKit "
                   "basis of new avatars (optional: without it avatars get the bundled ARKit basis, from LAM_WebRender's "
                   "MIT sample, and ZIP export needs --template)"),
    })
    return out


# -- licences ------------------------------------------------------------------
def licences_accepted(which: list[str]) -> bool:
    acc = load_manifest().get("licences") or {}
    return all(k in acc for k in which)


def record_licences(which: list[str]) -> None:
    data = load_manifest()
    acc = data.setdefault("licences", {})
    for k in which:
        acc[k] = _now()
    save_manifest(data)


# -- installing ------------------------------------------------------------------
def _url(origin: str, repo: str, name: str, revision: str = "main") -> str:
    return hub.file_url(origin, repo, revision, name)


def _revision(base: str, repo: str, probe: str, force: bool) -> str:
    """The commit to fetch ``repo`` at: the one recorded in assets.json (unless ``force``), else the
    hub's current ``main``, recorded before the first byte so that a resumed download stays on it."""
    recorded = (load_manifest().get("revisions") or {}).get(repo)
    if hub.is_commit(recorded) and not force:
        return recorded
    commit = hub.resolve_commit(base, repo, probe)
    if commit is None:
        return "main"  # a mirror that names no commit: unpinned, said in the manifest's source
    _record_revision(repo, commit)
    return commit


def _record_revision(repo: str, commit: str) -> None:
    if hub.is_commit(commit):
        data = load_manifest()
        data.setdefault("revisions", {})[repo] = commit
        save_manifest(data)


def _at(revision: str) -> str:
    return f"at commit {revision}" if hub.is_commit(revision) else "at 'main' (the endpoint named no commit)"


def _weights_verified(folder: Path) -> str:
    check_weights_dir(folder)
    n = check_weights_keys(folder)
    return f"config.json parsed; safetensors header: {n} tensors, all of the config's layout"


def fetch_weights(origin: str | None = None, *, force: bool = False, progress: Progress | None = None,
                  cancel: CancelToken | None = None) -> list[str]:
    """Download LAM-20K into the cache (pinned to a commit); returns one line per file saying what was verified."""
    from .download import download

    base = hub.endpoint(origin)
    folder = home() / "LAM-20K"
    rev = _revision(base, WEIGHTS_REPO, CONFIG_FILE, force)
    lines = []
    recorded = (load_manifest().get("weights") or {}).get("files") or {}
    files = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        dest = folder / name
        if dest.is_file() and not force:
            files[name] = recorded.get(name) or {"size": dest.stat().st_size}
            lines.append(f"{name}: already present ({dest.stat().st_size} bytes; --force fetches it again)")
            continue
        res = download(_url(base, WEIGHTS_REPO, name, rev), dest, origin=base, progress=progress, cancel=cancel,
                       token=hub.token(), expected_commit=rev if hub.is_commit(rev) else None)
        files[name] = {"size": res.size, "sha256": res.sha256}
        lines.append(f"{name}: {res.size} bytes, verified: {res.verified}")
    verified = _weights_verified(folder)
    _record("weights", {"path": str(folder), "source": f"downloaded from {base}/{WEIGHTS_REPO} {_at(rev)}",
                        "source_kind": "download", "repo": WEIGHTS_REPO, "revision": rev,
                        "url": _url(base, WEIGHTS_REPO, "", rev), "files": files,
                        "verified": "; ".join(lines + [verified])})
    return lines


def _install_assets_archive(tar: Path, *, source: str, kind: str, revision: str, verified: str,
                            progress: Progress | None, cancel: CancelToken | None, keep: bool) -> list[str]:
    """Safely extract LAM_assets.tar into the cache; load and register FLAME and the embedding."""
    from ..fit import load_landmark_embedding
    from ..flame import load_flame
    from .archive import safe_extract

    dest = home() / "lam_assets"
    try:
        written = safe_extract(tar, dest, progress=progress, cancel=cancel)
    except BadInputError:
        if not keep:
            tar.unlink(missing_ok=True)  # unsafe or unreadable: do not keep it around
        raise
    lines = [f"{ASSETS_ARCHIVE}: {tar.stat().st_size} bytes, verified: {verified}; {len(written)} files extracted to {dest}"]
    by_name = {p.name: p for p in written}
    flame = next((by_name[n] for n in FLAME_NAMES if n in by_name), None)
    if flame is None:
        raise BadInputError(f"{ASSETS_ARCHIVE} holds no FLAME model ({', '.join(FLAME_NAMES)}); the archive layout changed?")
    flame_check = verified
    if kind != "download":  # reused files: loaded before use (downloads were checked against the origin's sha256)
        load_flame(flame)
        flame_check = "loaded as a FLAME model (restricted unpickler)"
    common = {"source": source, "source_kind": kind, "repo": ASSETS_REPO, "revision": revision}
    _record("flame", {"path": str(flame), **common, "verified": flame_check})
    lines.append(f"FLAME: {flame}")
    if EMBEDDING_NAME in by_name:
        if kind != "download":
            load_landmark_embedding(by_name[EMBEDDING_NAME])
        _record("landmark_embedding", {"path": str(by_name[EMBEDDING_NAME]), **common})
        lines.append(f"landmark embedding: {by_name[EMBEDDING_NAME]}")
    if not keep:
        tar.unlink(missing_ok=True)
    return lines


def fetch_lam_assets(origin: str | None = None, *, force: bool = False, progress: Progress | None = None,
                     cancel: CancelToken | None = None) -> list[str]:
    """Download (pinned to a commit) and safely extract LAM_assets.tar; register FLAME and the embedding."""
    from .download import download

    base = hub.endpoint(origin)
    rev = _revision(base, ASSETS_REPO, ASSETS_ARCHIVE, force)
    tar = home() / "downloads" / ASSETS_ARCHIVE
    res = download(_url(base, ASSETS_REPO, ASSETS_ARCHIVE, rev), tar, origin=base, progress=progress, cancel=cancel,
                   token=hub.token(), expected_commit=rev if hub.is_commit(rev) else None)
    return _install_assets_archive(tar, source=f"downloaded from {base}/{ASSETS_REPO} ({ASSETS_ARCHIVE}) {_at(rev)}",
                                   kind="download", revision=rev, verified=res.verified, progress=progress,
                                   cancel=cancel, keep=False)


# -- reusing what is already on disk ---------------------------------------------
def reuse_cached_weights() -> str | None:
    """Register LAM-20K from a Hugging Face cache snapshot (verified, used in place); None when there is none.
    A snapshot that fails verification raises BadInputError naming the problem."""
    pinned = (load_manifest().get("revisions") or {}).get(WEIGHTS_REPO)
    found = hub.cached_snapshot(WEIGHTS_REPO, (CONFIG_FILE, WEIGHTS_FILE), pinned)
    if found is None:
        return None
    folder, commit = found
    verified = _weights_verified(folder)
    _record("weights", {"path": str(folder), "source": f"Hugging Face cache {folder} ({WEIGHTS_REPO} at commit {commit})",
                        "source_kind": "hf-cache", "repo": WEIGHTS_REPO, "revision": commit, "verified": verified})
    _record_revision(WEIGHTS_REPO, commit)
    return f"weights: reused the Hugging Face cache snapshot {folder} (not downloaded, not copied); {verified}"


def reuse_cached_lam_assets(progress: Progress | None = None, cancel: CancelToken | None = None) -> list[str] | None:
    """Extract LAM_assets.tar from a Hugging Face cache snapshot (no download); None when there is none."""
    pinned = (load_manifest().get("revisions") or {}).get(ASSETS_REPO)
    found = hub.cached_snapshot(ASSETS_REPO, (ASSETS_ARCHIVE,), pinned)
    if found is None:
        return None
    folder, commit = found
    lines = _install_assets_archive(
        folder / ASSETS_ARCHIVE, source=f"Hugging Face cache {folder} ({ASSETS_REPO} at commit {commit})",
        kind="hf-cache", revision=commit, verified="read from the Hugging Face cache (not downloaded)",
        progress=progress, cancel=cancel, keep=True)
    _record_revision(ASSETS_REPO, commit)
    return lines


def register_lam_repo(folder: str | os.PathLike) -> list[str]:
    """Register the assets of an official LAM repository checkout (github.com/aigc3d/LAM after its download
    steps), in place and verified: the LAM-20K weights under ``model_zoo/lam_models/...`` and FLAME 2023 +
    the landmark embedding under ``model_zoo/human_parametric_models/flame_assets/flame``."""
    from ..fit import load_landmark_embedding
    from ..flame import load_flame

    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise BadInputError(f"LAM repository folder not found: {root}")
    wdir, fdir = root / hub.LAM_REPO_WEIGHTS, root / hub.LAM_REPO_FLAME
    source = f"LAM repository {root}"
    lines = []
    if wdir.is_dir():
        verified = _weights_verified(wdir)
        _record("weights", {"path": str(wdir), "source": f"{source} ({hub.LAM_REPO_WEIGHTS})", "source_kind": "lam-repo",
                            "verified": verified})
        lines.append(f"weights: registered {wdir} (used in place, not copied); {verified}")
    flame = next((fdir / n for n in FLAME_NAMES if (fdir / n).is_file()), None)
    if flame is not None:
        load_flame(flame)  # BadInputError for anything that is not FLAME
        _record("flame", {"path": str(flame), "source": f"{source} ({hub.LAM_REPO_FLAME})", "source_kind": "lam-repo",
                          "verified": "loaded as a FLAME model (restricted unpickler)"})
        lines.append(f"FLAME: registered {flame} (used in place)")
    emb = fdir / EMBEDDING_NAME
    if emb.is_file():
        load_landmark_embedding(emb)
        _record("landmark_embedding", {"path": str(emb), "source": f"{source} ({hub.LAM_REPO_FLAME})",
                                       "source_kind": "lam-repo", "verified": "loaded"})
        lines.append(f"landmark embedding: registered {emb} (used in place)")
    if not lines:
        raise BadInputError(
            f"{root}: no LAM assets found (looked for {hub.LAM_REPO_WEIGHTS}/{CONFIG_FILE} + {WEIGHTS_FILE} and "
            f"{hub.LAM_REPO_FLAME}/flame2023.pkl); run the LAM repository's asset download steps there first"
        )
    for path, what in ((wdir, "weights"), (flame, "FLAME")):
        if path is None or not Path(path).exists():
            lines.append(f"{what}: not in {root} (kept as it was)")
    return lines


def register_weights(folder: str | os.PathLike) -> str:
    folder = Path(folder).expanduser().resolve()
    check_weights_dir(folder)
    _record("weights", {"path": str(folder), "source": f"local folder {folder}", "source_kind": "local", "verified": "config.json parsed, safetensors header read"})
    return f"weights: registered {folder} (used in place, not copied)"


def _copy_in(src: Path, sub: str) -> Path:
    dest = home() / sub / src.name
    if dest.resolve() != src.resolve():
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    return dest


def register_flame(file: str | os.PathLike) -> str:
    """Check that ``file`` loads as a FLAME model, then copy it into the cache."""
    from ..flame import load_flame

    src = Path(file).expanduser().resolve()
    if not src.is_file():
        raise BadInputError(f"FLAME file not found: {src}")
    model = load_flame(src)  # raises BadInputError for anything that is not FLAME
    dest = _copy_in(src, "flame")
    _record("flame", {"path": str(dest), "source": f"local file {src}", "source_kind": "local", "verified": "loaded as a FLAME model"})
    n = getattr(model, "n_vertices", None) or getattr(getattr(model, "v_template", None), "shape", [None])[0]
    return f"FLAME: copied {src.name} to {dest}" + (f" ({n} vertices)" if n else "")


def register_landmark_embedding(file: str | os.PathLike) -> str:
    from ..fit import load_landmark_embedding

    src = Path(file).expanduser().resolve()
    if not src.is_file():
        raise BadInputError(f"landmark embedding not found: {src}")
    load_landmark_embedding(src)  # raises BadInputError when unreadable
    dest = _copy_in(src, "flame")
    _record("landmark_embedding", {"path": str(dest), "source": f"local file {src}", "source_kind": "local", "verified": "loaded"})
    return f"landmark embedding: copied {src.name} to {dest}"


def register_lam_template(file: str | os.PathLike) -> str:
    """Check that ``file`` is a LAM web ZIP, copy it into the cache, derive its ARKit basis."""
    from ..core.formats.lam_zip import read_template
    from ..flame import arkit_basis

    src = Path(file).expanduser().resolve()
    template = read_template(src)  # raises BadInputError naming what is wrong
    basis = arkit_basis.from_template(template)
    dest = _copy_in(src, "lam_template")
    basis_file = basis.save(home() / "lam_template" / "arkit_basis.npz")
    _record("lam_template", {
        "path": str(dest), "basis": str(basis_file), "source": f"local file {src}", "source_kind": "local",
        "verified": f"read as a LAM web ZIP (sha256 {template.source_sha256}); {len(basis.names)} ARKit targets on "
                    f"{basis.n_vertices} vertices",
    })
    return f"LAM template: copied {src.name} to {dest} ({len(basis.names)} ARKit targets)"


def run_setup(
    *,
    accept_licences: bool = False,
    lam_assets: bool = False,
    weights: str | os.PathLike | None = None,
    flame: str | os.PathLike | None = None,
    landmark_embedding: str | os.PathLike | None = None,
    lam_template: str | os.PathLike | None = None,
    from_lam_repo: str | os.PathLike | None = None,
    origin: str | None = None,
    force: bool = False,
    confirm: Callable[[list[str]], bool] | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> list[str]:
    """``lam-head setup`` (CLI and server): register the local files given; otherwise get LAM-20K
    (unless installed), and the asset archive when ``lam_assets``: from a Hugging Face cache snapshot
    when there is one (verified, no download), else downloaded from the endpoint. Downloads need the
    licences accepted: ``accept_licences``, an earlier acceptance recorded in the manifest, or
    ``confirm(licence texts)`` returning True; ``HF_HUB_OFFLINE=1`` forbids them (MissingAssetError
    naming what is missing). Returns one line per action."""
    base = hub.endpoint(origin)
    lines: list[str] = []
    if from_lam_repo:
        lines += register_lam_repo(from_lam_repo)
    if weights:
        lines.append(register_weights(weights))
    if flame:
        lines.append(register_flame(flame))
    if landmark_embedding:
        lines.append(register_landmark_embedding(landmark_embedding))
    if lam_template:
        lines.append(register_lam_template(lam_template))
    download_weights = not (weights or flame or landmark_embedding or lam_template or from_lam_repo)
    if download_weights and installed_weights_dir() is not None and not force:
        lines.append(f"weights: already installed in {installed_weights_dir()} (--force downloads again)")
        download_weights = False
    if download_weights and not force:
        reused = reuse_cached_weights()
        if reused:
            lines.append(reused)
            download_weights = False
    from_archive = (load_manifest().get("flame") or {}).get("repo") == ASSETS_REPO  # the embedding is optional in it
    if lam_assets and not force and installed_flame_file() is not None and (
            installed_landmark_embedding() is not None or from_archive):
        lines.append(f"LAM assets: already installed (FLAME {installed_flame_file()}; --force downloads again)")
        lam_assets = False
    if lam_assets and not force:
        reused_assets = reuse_cached_lam_assets(progress=progress, cancel=cancel)
        if reused_assets:
            lines += reused_assets
            lam_assets = False
    needed = (["weights"] if download_weights else []) + (["flame"] if lam_assets else [])
    if needed and hub.offline():
        what = {"weights": f"LAM-20K weights ({WEIGHTS_REPO}: {CONFIG_FILE}, {WEIGHTS_FILE})",
                "flame": f"FLAME 2023 + landmark embedding ({ASSETS_REPO}: {ASSETS_ARCHIVE})"}
        raise MissingAssetError(
            f"HF_HUB_OFFLINE is set, so nothing is downloaded, and these are missing: "
            f"{'; '.join(what[k] for k in needed)} (not in the Hugging Face cache {hub.cache_dir()} either). "
            f"To get them: {FIX_OFFLINE}"
        )
    if needed and not accept_licences and not licences_accepted(needed):
        texts = [LICENCES[k] for k in needed]
        if confirm is None or not confirm(texts):
            raise LicenceNotAccepted(
                "the licences were not accepted, nothing was downloaded. " + " ".join(texts)
                + " If you agree, run: lam-head setup --accept-licences" + (" --lam-assets" if lam_assets else "")
            )
    if needed:
        record_licences(needed)
    if download_weights:
        lines += fetch_weights(base, force=force, progress=progress, cancel=cancel)
    if lam_assets:
        lines += fetch_lam_assets(base, force=force, progress=progress, cancel=cancel)
    return lines
