"""Targets: one TOML file per target in the top-level targets/ folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edgec.errors import EdgecError

TARGETS_DIR = Path(__file__).resolve().parents[2] / "targets"


def list_targets() -> list[dict]:
    return [load_target(p.stem) for p in sorted(TARGETS_DIR.glob("*.toml"))]


def load_target(name: str) -> dict:
    """The target's settings as a dict; EdgecError naming the known targets if `name` is unknown."""
    path = TARGETS_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(TARGETS_DIR.glob("*.toml")))
        raise EdgecError(f"unknown target '{name}' (known targets: {known})")
    with path.open("rb") as f:
        target = tomllib.load(f)
    target.setdefault("name", name)
    return target
