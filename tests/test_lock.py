"""The lock files: every package pinned with hashes, in step with pyproject.toml's pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def _lock(path: Path) -> dict[str, str]:
    """Package -> version of a uv/pip-compile lock file; fails on a pin without a hash."""
    pins: dict[str, str] = {}
    entries = re.split(r"\n(?=\S)", path.read_text())
    for entry in entries:
        if entry.startswith("#") or not entry.strip():
            continue
        match = _PIN.match(entry)
        assert match, f"{path.name}: not a pinned requirement: {entry.splitlines()[0]!r}"
        assert "--hash=sha256:" in entry, f"{path.name}: {match.group(1)} has no hash"
        pins[_name(match.group(1))] = match.group(2)
    return pins


def _declared(extra: str | None) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    if extra:
        deps += project["optional-dependencies"][extra]
    pins = {}
    for dep in deps:
        match = _PIN.match(dep)
        assert match, f"pyproject.toml: {dep!r} is not pinned with =="
        pins[_name(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize(
    ("lock", "extra"), [("requirements.lock", None), ("requirements-test.lock", "test")]
)
def test_lock_pins_what_pyproject_declares(lock: str, extra: str | None) -> None:
    locked = _lock(ROOT / lock)
    for name, version in _declared(extra).items():
        assert locked.get(name) == version, (
            f"{lock} has {name}=={locked.get(name)}, pyproject.toml {version}: run scripts/lock"
        )
    # The lock holds the whole tree, not only what is declared.
    assert len(locked) > len(_declared(extra))


def test_test_lock_is_the_runtime_lock_plus_the_test_tools() -> None:
    runtime, test = _lock(ROOT / "requirements.lock"), _lock(ROOT / "requirements-test.lock")
    assert {name: test.get(name) for name in runtime} == runtime
