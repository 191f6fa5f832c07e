"""Helpers that write tenant settings files for the unit tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HOST = "https://erp.example.test/hook"


def connector(**fields: Any) -> dict[str, Any]:
    """Return a valid connector named "erp", with ``fields`` added or replaced."""
    return {"Name": "erp", "Host": HOST, **fields}


def write_tenant(directory: Path, data: Any, tenant_id: str = "acme") -> Path:
    """Write ``data`` as JSON to ``<directory>/<tenant_id>.json``.

    A str is written unchanged, so a test can write invalid JSON.
    """
    path = directory / f"{tenant_id}.json"
    text = data if isinstance(data, str) else json.dumps(data)
    path.write_text(text, encoding="utf-8")
    return path
