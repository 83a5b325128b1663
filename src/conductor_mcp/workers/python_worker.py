"""The python worker: no model; it runs the program found in what its step sees, in the sandbox, and answers
with what the program printed (0 tokens, $0).

The program is the last ```python block among the outputs of the steps in its access list (the latest step
first), else the last one in its own instruction, so that a host can also hand it code directly.
"""

from __future__ import annotations

import re

import anyio

from ..models import WorkerSpec, Workflow
from . import sandbox

# a fenced block tagged python (or py/python3); a block left open at the end of a reply (cut by a token cap)
# still counts
_BLOCK = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)[ \t]*\n(.*?)(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)


def last_python_block(text: str) -> str | None:
    blocks = [b for b in _BLOCK.findall(text) if b.strip()]
    return blocks[-1] if blocks else None


def find_program(workflow: Workflow, index: int, outputs: dict[int, str]) -> tuple[str | None, str]:
    """The program step `index` runs and where it came from; no program: None, and where it was looked for."""
    seen = workflow.visible(index)
    for j in reversed(seen):
        code = last_python_block(outputs.get(j, ""))
        if code is not None:
            return code, f"step {j}"
    code = last_python_block(workflow.steps[index].instruction)
    if code is not None:
        return code, "its instruction"
    where = f"the outputs of steps {seen} or " if seen else ""
    return None, f"no ```python block in {where}its instruction"


def limits(spec: WorkerSpec) -> sandbox.Limits:
    return sandbox.Limits(timeout_s=spec.timeout_s, memory_mb=spec.memory_mb, output_chars=spec.max_output_chars,
                          network=spec.network)


async def run(spec: WorkerSpec, code: str, limiter: anyio.CapacityLimiter | None = None) -> sandbox.ProgramRun:
    return await sandbox.run_program_async(code, limits(spec), limiter=limiter)
