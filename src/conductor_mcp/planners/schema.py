"""The JSON schema a local conductor's decoding is constrained to, built from the live registry.

Every array and string is bounded (a 135M model loops without bounds), and each position in the
workflow has its own schema so that a step can only see earlier steps. llama-cpp-python's grammar
conversion honours `prefixItems` as a fixed length, so each allowed length is one `anyOf` branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

INSTRUCTION_MAX_CHARS = 200


def step_schema(index: int, ids: Sequence[str], instruction_max: int) -> dict[str, Any]:
    access: dict[str, Any] = (
        {"enum": ["none"]} if index == 0 else
        {"anyOf": [{"enum": ["all", "none"]},
                   {"type": "array", "items": {"enum": list(range(index))}, "maxItems": index}]})
    return {
        "type": "object",
        "properties": {
            "worker": {"enum": list(ids)},
            "instruction": {"type": "string", "minLength": 3, "maxLength": instruction_max},
            "access": access,
        },
        "required": ["worker", "instruction", "access"],
        "additionalProperties": False,
    }


def workflow_schema(ids: Sequence[str], max_steps: int, instruction_max: int = INSTRUCTION_MAX_CHARS,
                    allow_empty: bool = False) -> dict[str, Any]:
    """`allow_empty`: a review may answer with no steps, which accepts the answer as it is."""
    steps = [step_schema(i, ids, instruction_max) for i in range(max_steps)]
    first = 0 if allow_empty else 1
    return {
        "type": "object",
        "properties": {"steps": {"anyOf": [
            {"type": "array", "prefixItems": steps[:n], "items": False} for n in range(first, max_steps + 1)]}},
        "required": ["steps"],
        "additionalProperties": False,
    }


def max_plan_tokens(max_steps: int, instruction_max: int = INSTRUCTION_MAX_CHARS) -> int:
    """Enough tokens for the longest plan the schema allows (about 4 characters a token, plus syntax)."""
    return 16 + max_steps * (instruction_max // 3 + 40)
