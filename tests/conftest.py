import pytest


@pytest.fixture(autouse=True)
def strict_and_poisoned(monkeypatch):
    """Every test runs strict (no silent fallback to torch) with NaN-poisoned kernel outputs."""
    monkeypatch.setenv("DLKERN_STRICT", "1")
    monkeypatch.setenv("DLKERN_POISON_OUTPUTS", "1")
    monkeypatch.delenv("DLKERN_BACKEND", raising=False)
    yield
