"""Lua scripts as loaded: `--#include` expanded, so a shared step is written once."""

from __future__ import annotations

from importlib import resources

import pytest

from services.common.redis_scripts import LuaScript, read_script

PACKAGES = ["services.inventory.lua", "services.live_orders.lua", "services.notifier.lua"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_script_loads_with_its_includes_expanded(package: str) -> None:
    names = [p.name for p in resources.files(package).iterdir() if p.name.endswith(".lua")]
    assert names
    for name in names:
        source = LuaScript(package, name).source
        assert not [line for line in source.splitlines() if line.startswith("--#include")], name


def test_the_hold_release_is_written_once_and_used_by_three_scripts() -> None:
    package = "services.inventory.lua"
    users = [
        name
        for name in ("commit.lua", "release.lua", "expire_holds.lua", "reserve_batch.lua")
        if "release_hold(" in resources.files(package).joinpath(name).read_text()
    ]
    assert users == ["commit.lua", "release.lua", "expire_holds.lua"]
    for name in users:
        expanded = read_script(package, name)
        assert expanded.count("local function release_hold(") == 1
        # Defined before the script's own code uses it.
        assert expanded.index("local function release_hold(") < expanded.index("release_hold(stock")
    raw = resources.files(package).joinpath("commit.lua").read_text()
    assert "HINCRBY', buyers" not in raw  # the step itself lives only in hold.lua


def test_a_script_that_includes_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="includes itself"):
        read_script("services.inventory.lua", "commit.lua", ("commit.lua",))
