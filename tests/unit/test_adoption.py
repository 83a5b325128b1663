"""How often a server looks for orphaned runs: over HTTP by default every heartbeat, on stdio never; bad values
are refused naming the flag and the variable."""

from __future__ import annotations

import pytest

from conductor_mcp.errors import ConfigError
from conductor_mcp.runs.replicas import adopt_every
from conductor_mcp.store import heartbeat_s


def test_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONDUCTOR_ADOPT_S", raising=False)
    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "12")
    assert adopt_every(None, default_on=True) == heartbeat_s() == 2.0  # a sixth of the lease
    assert adopt_every(None, default_on=False) == 0.0  # stdio: one host's own server takes no one's runs
    monkeypatch.setenv("CONDUCTOR_ADOPT_S", "0.5")
    assert adopt_every(None, default_on=False) == 0.5  # asked for, on stdio too
    assert adopt_every(3, default_on=True) == 3.0  # the flag over the variable
    assert adopt_every("0", default_on=True) == 0.0


@pytest.mark.parametrize("value", ["soon", "-1", "0.01", "7200", "nan"])
def test_bad_values_are_refused_naming_where(value: str) -> None:
    with pytest.raises(ConfigError, match=r"--adopt-s or CONDUCTOR_ADOPT_S.*0\.05 to 3600, or 0"):
        adopt_every(value, default_on=True)
