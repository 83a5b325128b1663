"""Eval suites and their graders: load a JSONL suite, score an answer against a task's check.

A suite is JSON Lines, one task a line: `{"id": "...", "task": "...", "check": CHECK}` where CHECK
is a `number`, `exact`, `regex` or `python` check (the models below are the contract). A grade is
1.0 (correct) or 0.0 (wrong) with a short human reason.

The python grader runs untrusted model output through the sandbox (see sandbox.py): a child interpreter
with resource limits, an empty environment, a throwaway working directory and, where the platform can cut
it, no network. Unlike the python worker, a check still runs where the network cannot be cut: suites are
the user's own. Either way the code can read the user's files, so grade only suites you would run.
"""

from __future__ import annotations

import json
import math
import re
import signal
import textwrap
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from ..workers.sandbox import Limits, run_script

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 512
FILE_SIZE_LIMIT = 64 * 1024 * 1024  # per file the child writes; Python turns the excess into OSError(EFBIG)
REL_TOLERANCE = 1e-6
DETAIL_CHARS = 200
MAX_REPORTED_ERRORS = 20  # a broken suite reports this many lines at most, not thousands


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NumberCheck(_Strict):
    """The answer's number (first after the last `####`, else last in a `\\boxed{}`, else last) equals `answer`."""

    type: Literal["number"] = "number"
    answer: float = Field(allow_inf_nan=False)

    @field_validator("answer", mode="before")
    @classmethod
    def _number_text(cls, value: Any) -> Any:
        # A suite may write "1,234" or "$18" as a string; read it the way answers are read.
        if isinstance(value, str):
            parsed = _parse_number_text(value)
            if parsed is None:
                raise ValueError(f"not a number: {value!r}")
            return parsed
        return value


class ExactCheck(_Strict):
    """The answer equals `answer` after trimming whitespace, ignoring case."""

    type: Literal["exact"] = "exact"
    answer: str


class RegexCheck(_Strict):
    """`re.search(pattern, answer)` finds a match; use inline flags such as `(?i)` for options."""

    type: Literal["regex"] = "regex"
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class PythonCheck(_Strict):
    """The answer's code, then `tests`, run in a fresh limited interpreter; exit status 0 passes."""

    type: Literal["python"] = "python"
    tests: str
    entry_point: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=600)
    memory_mb: int = Field(default=DEFAULT_MEMORY_MB, ge=64)


Check = Annotated[NumberCheck | ExactCheck | RegexCheck | PythonCheck, Field(discriminator="type")]
_CHECK_TYPES = ("number", "exact", "regex", "python")


class SuiteTask(_Strict):
    id: str = Field(min_length=1)
    task: str = Field(min_length=1)
    check: Check


class Grade(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True)

    score: float = Field(ge=0.0, le=1.0)
    detail: str

    @property
    def passed(self) -> bool:
        return self.score >= 1.0


def _right(detail: str) -> Grade:
    return Grade(score=1.0, detail=detail)


def _wrong(detail: str) -> Grade:
    return Grade(score=0.0, detail=detail)


# ---------------------------------------------------------------------------------------------- suites


def load_suite(path: str | Path) -> list[SuiteTask]:
    """Read a JSONL suite; every malformed line is reported as `file:line: field 'x': why`."""
    path = Path(path).expanduser()
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM from editors on Windows
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the suite: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: the suite is not UTF-8 text: {exc}") from None

    tasks: list[SuiteTask] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prefix = f"{where}:{lineno}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{prefix}: not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(raw, dict):
            errors.append(f"{prefix}: expected a JSON object with id, task and check, got {type(raw).__name__}")
            continue
        try:
            task = SuiteTask.model_validate(raw)
        except ValidationError as exc:
            errors.extend(_format_validation(exc, prefix))
            continue
        if task.id in first_line:
            errors.append(f"{prefix}: field 'id': duplicate id {task.id!r} (first on line {first_line[task.id]})")
            continue
        first_line[task.id] = lineno
        tasks.append(task)

    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        if len(errors) > len(shown):
            shown.append(f"{where}: ... and {len(errors) - len(shown)} more errors")
        raise ConfigError("\n".join(shown))
    if not tasks:
        raise ConfigError(f"{where}: the suite has no tasks; write one JSON object a line: "
                          '{"id": ..., "task": ..., "check": {"type": "number", "answer": ...}}')
    return tasks


def _format_validation(err: ValidationError, prefix: str) -> list[str]:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        # The discriminated union puts the tag in the path (check.number.answer); users wrote check.answer.
        if len(loc) >= 2 and loc[0] == "check" and loc[1] in _CHECK_TYPES:
            del loc[1]
        field = ".".join(loc)
        lines.append(f"{prefix}: field {field!r}: {e['msg']}" if field else f"{prefix}: {e['msg']}")
    return lines


# ---------------------------------------------------------------------------------------------- grading


def grade(check: Check, answer: str | None) -> Grade:
    """Score `answer` against `check`. Blocking: a python check runs a subprocess (see grade_async)."""
    if answer is None:
        return _wrong("no answer")
    if isinstance(check, NumberCheck):
        return _grade_number(check, answer)
    if isinstance(check, ExactCheck):
        return _grade_exact(check, answer)
    if isinstance(check, RegexCheck):
        return _grade_regex(check, answer)
    return _grade_python(check, answer)


async def grade_async(check: Check, answer: str | None, *, limiter: anyio.CapacityLimiter | None = None) -> Grade:
    """`grade` without blocking the event loop; `limiter` bounds how many python checks run at once."""
    if isinstance(check, PythonCheck) and answer is not None:
        return await anyio.to_thread.run_sync(grade, check, answer, limiter=limiter)
    return grade(check, answer)


# number ------------------------------------------------------------------------------------------------

# Ints and decimals with optional thousands commas, a sign and a dollar sign. A sign glued to a word or
# digit is a hyphen ("3-5", "2024-01"), not a minus.
_NUMBER = re.compile(
    r"(?:(?<![\w.])(?P<sign>[-+\u2212]))?\$?"
    r"(?P<digits>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def _to_float(match: re.Match[str]) -> float:
    value = float(match["digits"].replace(",", ""))
    return -value if match["sign"] in ("-", "\u2212") else value


def _parse_number_text(text: str) -> float | None:
    match = _NUMBER.fullmatch(text.strip())
    return _to_float(match) if match else None


def extract_number(answer: str) -> float | None:
    """The number an answer commits to, or None.

    After a GSM8K-style `####` the first number counts (trailing prose may hold others); else the last
    number in the last `\\boxed{}`; else the last number anywhere.
    """
    if "####" in answer:
        match = _NUMBER.search(answer.rsplit("####", 1)[1])
        return _to_float(match) if match else None
    boxed = _BOXED.findall(answer)
    text = boxed[-1] if boxed else answer
    matches = list(_NUMBER.finditer(text))
    return _to_float(matches[-1]) if matches else None


def _fmt(value: float) -> str:
    return f"{value:.12g}"


def _grade_number(check: NumberCheck, answer: str) -> Grade:
    got = extract_number(answer)
    if got is None:
        return _wrong("no number after '####'" if "####" in answer else "no number in the answer")
    if math.isclose(got, check.answer, rel_tol=REL_TOLERANCE, abs_tol=1e-9):
        return _right(f"correct: {_fmt(got)}")
    return _wrong(f"expected {_fmt(check.answer)}, got {_fmt(got)}")


# exact and regex ---------------------------------------------------------------------------------------


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _grade_exact(check: ExactCheck, answer: str) -> Grade:
    if answer.strip().casefold() == check.answer.strip().casefold():
        return _right("correct")
    return _wrong(f"expected {check.answer.strip()!r}, got {_shorten(answer.strip())!r}")


def _grade_regex(check: RegexCheck, answer: str) -> Grade:
    if re.search(check.pattern, answer):
        return _right("pattern found")
    return _wrong(f"pattern {_shorten(check.pattern)!r} not found in the answer")


# python ------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)


def extract_code(answer: str) -> str:
    """The first ```python block; else the first ```py or bare ``` block; else the whole answer."""
    fallback: str | None = None
    for match in _FENCE.finditer(answer):
        lang = match[1].lower()
        if lang in ("python", "python3"):
            return textwrap.dedent(match[2])
        if fallback is None and lang in ("py", "py3", ""):
            fallback = match[2]
    return textwrap.dedent(fallback if fallback is not None else answer)


_MARK = "@@conductor-grade@@"  # the child's own verdict line on stderr, told apart from the answer's output

# Runs in the sandbox after its prelude (limits, environment, network): the code and the tests in one module
# namespace named `solution`, not `__main__`, so an answer's demo block (`if __name__ == "__main__": ...`,
# often reading stdin or calling sys.exit) does not run, as in HumanEval-style harnesses. Both sources are
# read before any answer code runs, so the code cannot rewrite the tests.
_CHECK_SCRIPT = r"""
import traceback, types
MARK, entry = sys.argv[1], sys.argv[2]
def verdict(msg):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(2, ("\n" + MARK + " " + msg.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    os._exit(1)
def describe(exc):
    text = str(exc)
    return type(exc).__name__ + (": " + text if text else "")
with open("solution.py", encoding="utf-8") as f:
    code = f.read()
with open("tests.py", encoding="utf-8") as f:
    tests = f.read()
sys.argv = ["solution.py"]
module = types.ModuleType("solution")
module.__file__ = os.path.abspath("solution.py")
sys.modules["solution"] = module
ns = module.__dict__
try:
    exec(compile(code, "solution.py", "exec"), ns)
except SystemExit:
    verdict("the code exited before the tests ran")
except MemoryError:
    verdict("exceeded memory limit")
except BaseException as exc:
    traceback.print_exc()
    verdict("the code failed: " + describe(exc))
if entry and entry not in ns:
    verdict("entry point %r is not defined by the code" % entry)
try:
    exec(compile(tests, "tests.py", "exec"), ns)
except SystemExit:
    raise
except MemoryError:
    verdict("exceeded memory limit")
except BaseException as exc:
    traceback.print_exc()
    frames = [fr for fr in traceback.extract_tb(exc.__traceback__) if fr.filename == "tests.py"]
    where = " (line %d: %s)" % (frames[-1].lineno, frames[-1].line) if frames and frames[-1].line else ""
    verdict("tests failed: " + describe(exc) + where)
"""


def _limit(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"


def _python_verdict(returncode: int, stderr: str) -> Grade:
    if returncode == 0:
        return _right("tests passed")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    marked = [ln[len(_MARK):].strip() for ln in lines if ln.startswith(_MARK)]
    if marked:
        return _wrong(_limit(marked[-1]))
    if returncode < 0:
        sig = -returncode
        if sig == getattr(signal, "SIGXCPU", None):
            return _wrong("exceeded CPU time limit")
        if sig == signal.SIGKILL:
            return _wrong("killed by SIGKILL (out of memory?)")
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return _wrong(f"crashed with {name}")
    last = lines[-1] if lines else ""
    if last.startswith("MemoryError"):
        return _wrong("exceeded memory limit")
    return _wrong(_limit(f"tests failed: {last}" if last else f"tests failed with exit code {returncode}"))


def _grade_python(check: PythonCheck, answer: str) -> Grade:
    code = extract_code(answer)
    limits = Limits(timeout_s=check.timeout_s, memory_mb=check.memory_mb, file_size_bytes=FILE_SIZE_LIMIT,
                    output_chars=0)  # the verdict comes from the exit status and stderr; stdout is not read
    run = run_script(_CHECK_SCRIPT, code=code, files={"solution.py": code, "tests.py": check.tests},
                     args=(_MARK, check.entry_point or ""), limits=limits, cut_required=False)
    if run.timed_out:
        return _wrong(f"timed out after {check.timeout_s:g}s")
    if run.exit_status is None:  # only a refused run has none, and cut_required=False never refuses
        return _wrong(f"not run: {run.refused}")
    return _python_verdict(run.exit_status, run.stderr)
