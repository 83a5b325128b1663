"""Read a plan out of a conductor's text: JSON, or the paper's three Python lists."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from typing import Any

from ..errors import WorkflowError


def parse_json_plan(text: str) -> Any:
    """The first JSON object in `text` (models sometimes wrap it in prose or a code fence)."""
    start = text.find("{")
    if start < 0:
        raise WorkflowError("the conductor's reply holds no JSON object")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"the conductor's reply is not valid JSON: {exc.msg} at char {exc.pos}") from None
    return value


def _literal_list_at(text: str, start: int) -> list[Any] | None:
    """The shortest Python list literal starting at text[start] == "[", if there is one."""
    end = text.find("]", start)
    while end >= 0:
        try:
            value = ast.literal_eval(text[start:end + 1])
        except (ValueError, SyntaxError):
            end = text.find("]", end + 1)
            continue
        return value if isinstance(value, list) else None
    return None


def _find_list(text: str, name: str) -> list[Any]:
    """The last `name = [...]` that parses: earlier mentions may sit in the model's reasoning."""
    starts = [m.end() - 1 for m in re.finditer(rf"\b{name}\s*=\s*\[", text)]
    if not starts:
        raise WorkflowError(f"the conductor's reply has no `{name} = [...]` list")
    for start in reversed(starts):
        value = _literal_list_at(text, start)
        if value is not None:
            return value
    raise WorkflowError(f"`{name}` is not a Python list literal")


def parse_paper_plan(text: str, ids: Sequence[str]) -> dict[str, Any]:
    """The paper's `model_id`, `subtasks`, `access_list`; model_id integers index `ids` in order."""
    model_id = _find_list(text, "model_id")
    subtasks = _find_list(text, "subtasks")
    access_list = _find_list(text, "access_list")
    if not (len(model_id) == len(subtasks) == len(access_list)):
        raise WorkflowError(f"the three lists differ in length: model_id {len(model_id)}, "
                            f"subtasks {len(subtasks)}, access_list {len(access_list)}")
    steps = []
    for i, (mid, sub, acc) in enumerate(zip(model_id, subtasks, access_list, strict=True)):
        if isinstance(mid, bool) or not isinstance(mid, int) or not 0 <= mid < len(ids):
            raise WorkflowError(f"model_id[{i}] = {mid!r}: expected a worker number 0..{len(ids) - 1}")
        if not isinstance(acc, list):
            raise WorkflowError(f"access_list[{i}] = {acc!r}: expected a list")
        access: Any = "all" if "all" in acc else (acc or "none")
        steps.append({"worker": ids[mid], "instruction": str(sub), "access": access})
    return {"steps": steps}
