"""The tool schemas hosts see: compact, and naming the registry's live worker ids.

A host pays for tools/list in its context on every turn (DESIGN.md caps it at 8,000 characters), and most
hosts never read a resource by themselves, so the ids a `workers`, `worker` or `strategy` argument takes
are written into the schemas as enums when tools are listed. Fields say where ids belong with a marker
in their JSON Schema (`WORKER_ID`, `STRATEGY`), set through pydantic's json_schema_extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WORKER_ID = "x-worker-id"  # this string is a worker id
STRATEGY = "x-strategy"  # this string is conductor, moa, single:<worker id> or recipe:<name>
MARKERS = (WORKER_ID, STRATEGY)


def compact(schema: Any) -> Any:
    """Pydantic's per-field titles repeat the names, `"default": null` says what optional already says,
    and `anyOf: [T, null]` is `type: [T, "null"]` in fewer characters; a `$defs` entry is written where
    it is used."""
    if isinstance(schema, dict) and isinstance(schema.get("$defs"), dict):
        defs = schema["$defs"]
        schema = _inline({k: v for k, v in schema.items() if k != "$defs"}, defs)
    return _strip(schema)


def _inline(schema: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(schema, list):
        return [_inline(v, defs, seen) for v in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in seen:  # a recursive model cannot be written out: none of ours is
            raise ValueError(f"schema: {name} refers to itself")
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return {**_inline(defs[name], defs, (*seen, name)), **rest}
    return {k: _inline(v, defs, seen) for k, v in schema.items()}


def _strip(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strip(v) for k, v in schema.items()
           if not (k == "title" and isinstance(v, str)) and not (k == "default" and v is None)}
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next(o for o in options if o != {"type": "null"})
        if isinstance(other, dict) and isinstance(other.get("type"), str):
            del out["anyOf"]
            merged = {**other, **out, "type": [other["type"], "null"]}
            if "enum" in merged:
                merged["enum"] = [*merged["enum"], None]
            return merged
    return out


def output_shape(schema: Any) -> Any:
    """An output schema as hosts need it: the fields and their types. `required` lists (every field is always
    sent), `additionalProperties: true` (the default) and `type: object` on array items that list properties
    are left out: the run's shape comes three times (solve, resume, get_run)."""
    if isinstance(schema, list):
        return [output_shape(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: output_shape(v) for k, v in schema.items()
           if k != "required" and not (k == "additionalProperties" and v is True)}
    items = out.get("items")
    if isinstance(items, dict) and items.get("type") == "object" and "properties" in items:
        out["items"] = {k: v for k, v in items.items() if k != "type"}  # `properties` applies to objects only
    return out


def optional_not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An argument a host may leave out needs no `null` besides: omitting it says the same, in fewer
    characters (the server still takes an explicit null)."""
    required = set(schema.get("required") or [])
    props = {}
    for name, prop in (schema.get("properties") or {}).items():
        if name not in required and isinstance(prop, dict) and isinstance(prop.get("type"), list):
            kinds = [t for t in prop["type"] if t != "null"]
            prop = {**prop, "type": kinds[0] if len(kinds) == 1 else kinds}
            if "enum" in prop:
                prop["enum"] = [v for v in prop["enum"] if v is not None]
        props[name] = prop
    return {**schema, "properties": props} if props else schema


def with_worker_ids(schema: Any, ids: Sequence[str] | None, everywhere: bool = True,
                    strategies: Sequence[str] | None = None, _item: bool = False) -> Any:
    """Each marked field given the enum of `ids` (worker ids) or `strategies` (default: the conductor, moa and
    each id alone); with no ids (a registry that did not load) the markers are only removed. Not `everywhere`:
    only the items of an array of worker ids (a tool's `workers`), for a registry whose ids would not fit
    everywhere."""
    if isinstance(schema, list):
        return [with_worker_ids(v, ids, everywhere, strategies) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: with_worker_ids(v, ids, everywhere, strategies, _item=k == "items")
           for k, v in schema.items() if k not in MARKERS}
    if ids and schema.get(WORKER_ID) and (everywhere or _item):
        out["enum"] = list(ids)
    elif ids and schema.get(STRATEGY) and everywhere:
        out["enum"] = list(strategies) if strategies else ["conductor", "moa", *(f"single:{i}" for i in ids)]
    return out
