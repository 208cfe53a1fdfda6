"""How the search starts Ray: a fresh local cluster by default, the given one with --address."""

from __future__ import annotations

from typing import Any

import pytest

from rank_search.search import runner


@pytest.mark.parametrize(("address", "expected"), [(None, "local"), ("ray://head:10001", "ray://head:10001")])
def test_init_ray_never_joins_a_stray_cluster(
    monkeypatch: pytest.MonkeyPatch, address: str | None, expected: str
) -> None:
    import ray

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    assert runner._init_ray(address, verbose=False) is True
    assert calls[0]["address"] == expected
    if address is None:
        assert calls[0]["include_dashboard"] is False
