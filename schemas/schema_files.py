"""JSON Schema files for every event, for producers written in other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .codec import EVENT_ADAPTER, WIRE_REQUIRED
from .events import EVENT_CLASSES

__all__ = ["SCHEMA_DIR", "render_schema_files", "stale_schema_files", "write_schema_files"]

#: Where the generated files live (inside the installed package, and in the repo's schemas/json).
SCHEMA_DIR = Path(__file__).parent / "json"


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _wire_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Mark the fields decode() insists on as required (Python callers get defaults)."""
    schema["required"] = sorted({*schema.get("required", ()), *WIRE_REQUIRED})
    return schema


def render_schema_files() -> dict[str, str]:
    """File name -> content, for each event type plus `Event` (the union of all)."""
    files = {
        f"{model.__name__}.schema.json": _dump(
            {"$schema": "https://json-schema.org/draft/2020-12/schema"}
            | _wire_schema(model.model_json_schema(mode="validation"))
        )
        for model in EVENT_CLASSES
    }
    union = EVENT_ADAPTER.json_schema(mode="validation")
    for definition in union["$defs"].values():
        if "event_type" in definition.get("properties", {}):
            _wire_schema(definition)
    union = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Event"} | union
    files["Event.schema.json"] = _dump(union)
    return files


def write_schema_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    """(Re)write the schema files; returns the paths whose content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, content in render_schema_files().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed.append(path)
    return changed


def stale_schema_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of files that are missing, outdated or no longer generated."""
    expected = render_schema_files()
    stale = [
        name
        for name, content in expected.items()
        if not (directory / name).exists()
        or (directory / name).read_text(encoding="utf-8") != content
    ]
    if directory.exists():
        stale += sorted(p.name for p in directory.glob("*.json") if p.name not in expected)
    return stale
