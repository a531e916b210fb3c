"""Developer set-up and test runner. Standard library only.

    python3 -m backend.devenv          # create/refresh .venv (torch CPU, backend, bpy 5.0, test tools)
    python3 -m backend.devenv test     # ... plus .venv-bpy45, then ruff and the whole test suite
    python3 -m backend.devenv build    # the Blender extension zip: dist/lam_head-<version>.zip
    python3 -m backend.devenv web-player  # chromium + tests/web_player's npm packages (part of `test`)

Both environments live in the repo root and are reused when their inputs did
not change. The Blender tests run twice: under bpy 5.0 (in .venv) and under
bpy 4.5 LTS (in .venv-bpy45, which has no torch: the backend subprocess those
tests start runs from .venv).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

from .setup import environment

ROOT = Path(__file__).resolve().parent.parent
MAIN_VENV = ROOT / ".venv"
BPY45_VENV = ROOT / ".venv-bpy45"
WEB_PLAYER_DIR = ROOT / "tests" / "web_player"  # package.json + package-lock.json pin the LAM web player
BPY45_REQUIREMENTS = ["bpy==4.5.15", "numpy<2", "pytest", "plyfile", "numba", "safetensors", "pillow"]


def setup_main() -> Path:
    return environment.install(
        MAIN_VENV,
        ["-e", f"{ROOT}[backend,blender,test,cluster]"],
        stamp_inputs=[ROOT / "pyproject.toml", environment.REQUIREMENTS_FILE, ROOT / "backend" / "requirements-cluster.txt",
                      ROOT / "tests" / "requirements.txt", ROOT / "tests" / "requirements-blender.txt"],
    )


def setup_bpy45() -> Path:
    return environment.install(
        BPY45_VENV, BPY45_REQUIREMENTS, with_torch=False, with_mediapipe=False
    )


def blender_ext_script(python: Path | str) -> Path:
    """``blender_ext.py`` (Blender's extension build/validate tool) from the bpy wheel installed for ``python``."""
    probe = "import importlib.util as u; s = u.find_spec('bpy'); print(s.submodule_search_locations[0] if s else '')"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    if not out:
        raise environment.EnvironmentError_(f"bpy is not installed for {python}; run `python3 -m backend.devenv` first")
    found = sorted(Path(out).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise environment.EnvironmentError_(f"blender_ext.py not found inside the bpy package at {out}")
    return found[-1]


def build_extension(output_dir: Path | str | None = None, python: Path | str | None = None, log=print) -> Path:
    """Build and validate the extension zip from the repo root (the manifest's
    ``paths_exclude_pattern`` keeps tests, bench, caches out). Returns its path."""
    py = Path(python) if python else environment.venv_python(MAIN_VENV)
    out_dir = Path(output_dir) if output_dir else ROOT / "dist"
    out_dir.mkdir(parents=True, exist_ok=True)
    tool = blender_ext_script(py)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as tmp:
        cmd = [str(py), str(tool), "build", "--source-dir", str(ROOT), "--output-dir", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        zips = sorted(Path(tmp).glob("*.zip"))
        if res.returncode != 0 or len(zips) != 1:
            raise environment.EnvironmentError_(f"building the extension failed:\n{res.stdout}{res.stderr}")
        res = subprocess.run([str(py), str(tool), "validate", str(zips[0])], capture_output=True, text=True)
        if res.returncode != 0:
            raise environment.EnvironmentError_(f"the built extension does not validate:\n{res.stdout}{res.stderr}")
        final = out_dir / zips[0].name
        os.replace(zips[0], final)
    log(f"built {final}")
    return final


def _step(cmd: list[str], env: dict[str, str] | None = None) -> int:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def _web_player_installed() -> bool:
    deps = json.loads((WEB_PLAYER_DIR / "package.json").read_text())["dependencies"]
    for name, version in deps.items():
        installed = WEB_PLAYER_DIR / "node_modules" / name / "package.json"
        if not installed.is_file() or json.loads(installed.read_text()).get("version") != version:
            return False
    return True


def setup_web_player() -> str | None:
    """What tests/test_web_player.py needs: Debian's chromium, node/npm (apt-get, only when missing
    and only as root) and ``npm ci`` of the pinned packages into the git-ignored
    tests/web_player/node_modules (the browser puppeteer would download is skipped). Best effort:
    returns why it could not (the test then skips, saying so) instead of failing the run."""
    missing = [pkg for pkg, exe in (("chromium", "chromium"), ("nodejs", "node"), ("npm", "npm")) if not shutil.which(exe)]
    if missing:
        if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
            return f"{', '.join(missing)} missing (install: apt-get install -y {' '.join(missing)})"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if _step(["apt-get", "update"], env) or _step(["apt-get", "install", "-y", *missing], env):
            return f"apt-get could not install {', '.join(missing)}"
    if _web_player_installed():
        return None
    if not shutil.which("npm"):
        return "npm missing (install: apt-get install -y nodejs npm)"
    print(f"\n$ (cd {WEB_PLAYER_DIR.relative_to(ROOT)} && npm ci)", flush=True)
    env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1")
    rc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB_PLAYER_DIR, env=env).returncode
    return None if rc == 0 and _web_player_installed() else f"npm ci failed in {WEB_PLAYER_DIR}"


def _junit_counts(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a pytest JUnit XML report (missing report: nothing ran)."""
    if not report.is_file():
        return 0, 0, 0
    suites = ElementTree.parse(report).getroot().iter("testsuite")
    tests = failed = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


def run_tests(pytest_args: list[str]) -> int:
    py = setup_main()
    py45 = setup_bpy45()
    rc = _step([str(py), "-m", "ruff", "check", "."])
    if rc:
        print("ruff found problems (above)", file=sys.stderr)
        return rc
    why = setup_web_player()
    if why:
        print(f"web player test will be skipped: {why}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        reports = [Path(tmp) / "bpy50.xml", Path(tmp) / "bpy45.xml"]
        rc = _step([str(py), "-m", "pytest", f"--junitxml={reports[0]}", *pytest_args])
        if rc == 0:  # tests/blender again under bpy 4.5 LTS; its backend subprocess runs from .venv
            env = dict(os.environ, LAM_HEAD_BACKEND_PYTHON=str(py))
            rc = _step([str(py45), "-m", "pytest", "tests/blender", f"--junitxml={reports[1]}", *pytest_args], env=env)
        passed, failed, skipped = (sum(c) for c in zip(*map(_junit_counts, reports)))
    # One closing line over both runs (Blender prints its own exit messages after pytest's summary).
    print(f"\nall runs (bpy 5.0 suite + bpy 4.5 Blender tests): {passed} passed, {failed} failed, {skipped} skipped")
    return rc


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if sys.version_info < (3, 10):  # noqa: UP036 (run by the system python, which may be old)
        print("Python 3.10 or newer is needed (3.11 recommended).", file=sys.stderr)
        return 2
    try:
        if not args:
            setup_main()
            print(f"\nReady: {environment.venv_python(MAIN_VENV)} (try: .venv/bin/lam-head --help)")
            return 0
        if args[0] == "test":
            return run_tests(args[1:])
        if args[0] == "web-player" and len(args) == 1:
            why = setup_web_player()
            print(why or f"Ready: chromium, node and {WEB_PLAYER_DIR / 'node_modules'}", file=sys.stderr if why else sys.stdout)
            return 1 if why else 0
        if args[0] == "build" and len(args) == 1:
            build_extension()
            return 0
    except environment.EnvironmentError_ as exc:
        print(f"set-up failed: {exc}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
