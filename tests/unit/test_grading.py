"""Suites and graders: every check type on real answers; python checks in real, limited subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conductor_mcp.errors import ConfigError
from conductor_mcp.evals.grading import (
    Check,
    ExactCheck,
    NumberCheck,
    PythonCheck,
    RegexCheck,
    extract_code,
    extract_number,
    grade,
    grade_async,
    load_suite,
)

GSM8K_ANSWER = """Natalia sold 48/2 = 24 clips in May.
She sold 48 + 24 = 72 clips altogether in April and May.
#### 72"""

CODE_ANSWER = """Sure! Here is a function that doubles its input:

```python
def f(x):
    return 2 * x
```

It works for ints and floats alike; for example f(2) gives 4.
"""


# number ------------------------------------------------------------------------------------------------


def test_number_gsm8k_style() -> None:
    assert grade(NumberCheck(answer=72), GSM8K_ANSWER).score == 1.0
    wrong = grade(NumberCheck(answer=18), GSM8K_ANSWER)
    assert (wrong.score, wrong.detail) == (0.0, "expected 18, got 72")
    # After `####` the first number counts, whatever prose follows it.
    assert grade(NumberCheck(answer=18), "3 + 15 = 18\n#### 18 apples, since 3 + 15 is 18 and 2 are left").passed


def test_number_formats() -> None:
    assert grade(NumberCheck(answer=1234), "The answer is $1,234.").passed
    assert grade(NumberCheck(answer=-3.5), "Subtracting gives -3.5").passed
    assert grade(NumberCheck(answer=18), "That costs $18.00 in total.").passed
    assert grade(NumberCheck(answer=0.1 + 0.2), "0.3").passed  # within the relative tolerance
    assert grade(NumberCheck.model_validate({"answer": "1,234"}), "1234").passed  # a suite may write the answer as text
    assert grade(NumberCheck(answer=5), "Between 3-5 people").passed  # a hyphen is not a minus
    assert grade(NumberCheck(answer=42), r"So x = 7 and the result is \boxed{42}. Check: 6 * 7 = 42, x = 7.").passed
    assert grade(NumberCheck(answer=1234), "The answer is $1,235.").detail == "expected 1234, got 1235"
    assert extract_number("1/2") == 2.0  # fractions are not read as numbers


def test_number_missing() -> None:
    assert grade(NumberCheck(answer=1), "I do not know.").detail == "no number in the answer"
    assert grade(NumberCheck(answer=1), "It is 4.\n#### unknown").detail == "no number after '####'"
    assert extract_number("") is None


def test_no_answer_is_wrong_for_every_check() -> None:
    checks: list[Check] = [NumberCheck(answer=1), ExactCheck(answer="a"), RegexCheck(pattern="a"),
                           PythonCheck(tests="pass")]
    for check in checks:
        g = grade(check, None)
        assert (g.score, g.detail) == (0.0, "no answer")


# exact and regex ---------------------------------------------------------------------------------------


def test_exact() -> None:
    assert grade(ExactCheck(answer="Paris"), "  paris \n").passed
    wrong = grade(ExactCheck(answer="Paris"), "The capital is Paris.")
    assert not wrong.passed
    assert wrong.detail == "expected 'Paris', got 'The capital is Paris.'"


def test_regex() -> None:
    check = RegexCheck(pattern=r"(?i)\bparis\b")
    assert grade(check, "I think it's PARIS, France.").passed
    wrong = grade(check, "Lyon")
    assert not wrong.passed
    assert "not found" in wrong.detail


# python ------------------------------------------------------------------------------------------------

DOUBLE_TESTS = "assert f(2) == 4\nassert f(-1) == -2"


def test_python_right_and_wrong() -> None:
    check = PythonCheck(tests=DOUBLE_TESTS, entry_point="f")
    right = grade(check, CODE_ANSWER)
    assert (right.score, right.detail) == (1.0, "tests passed")
    wrong = grade(check, CODE_ANSWER.replace("2 * x", "x + 2"))
    assert wrong.score == 0.0
    assert wrong.detail.startswith("tests failed: AssertionError")
    assert "assert f(-1) == -2" in wrong.detail  # which test failed


def test_code_extraction() -> None:
    py_first = "```\nprint('bare')\n```\n```py\nx = 1\n```\n```python\nx = 2\n```"
    assert extract_code(py_first) == "x = 2\n"
    assert extract_code("```py\nx = 1\n```\n```\nx = 3\n```") == "x = 1\n"
    assert extract_code("Code:\n```\ndef f(x):\n    return 2 * x\n```\n") == "def f(x):\n    return 2 * x\n"
    assert extract_code("def f(x): return 2 * x") == "def f(x): return 2 * x"
    assert extract_code("1. Step\n   ```python\n   y = 1\n   ```") == "y = 1\n"  # indented fence in a list
    check = PythonCheck(tests=DOUBLE_TESTS, entry_point="f")
    assert grade(check, "def f(x):\n    return x * 2\n").passed  # no fence: the whole answer is code


def test_python_demo_block_does_not_run() -> None:
    # A demo that reads stdin or exits would fail or falsely pass; it is not the code under test.
    answer = ("```python\nimport sys\ndef f(x):\n    return 2 * x\n"
              "if __name__ == '__main__':\n    print(f(int(input())))\n    sys.exit(0)\n```")
    assert grade(PythonCheck(tests=DOUBLE_TESTS, entry_point="f"), answer).passed


def test_python_early_exit_is_not_a_pass() -> None:
    g = grade(PythonCheck(tests="assert False", entry_point="f"), "import sys\ndef f(): pass\nsys.exit(0)")
    assert (g.score, g.detail) == (0.0, "the code exited before the tests ran")


def test_python_missing_entry_point() -> None:
    g = grade(PythonCheck(tests=DOUBLE_TESTS, entry_point="f"), "```python\ndef double(x):\n    return 2 * x\n```")
    assert (g.score, g.detail) == (0.0, "entry point 'f' is not defined by the code")


def test_python_crash() -> None:
    g = grade(PythonCheck(tests=DOUBLE_TESTS, entry_point="f"), "def f(x):\n    raise ValueError('boom')")
    assert g.score == 0.0
    assert g.detail.startswith("tests failed: ValueError: boom")
    g = grade(PythonCheck(tests=DOUBLE_TESTS), "raise RuntimeError('at import')")
    assert g.detail == "the code failed: RuntimeError: at import"
    g = grade(PythonCheck(tests=DOUBLE_TESTS), "def f(x) return x")
    assert g.detail.startswith("the code failed: SyntaxError")


def test_python_infinite_loop_times_out() -> None:
    g = grade(PythonCheck(tests="f()", entry_point="f", timeout_s=1.5), "def f():\n    while True:\n        pass")
    assert (g.score, g.detail) == (0.0, "timed out after 1.5s")


def test_python_memory_limit() -> None:
    g = grade(PythonCheck(tests="f()", entry_point="f"), "def f():\n    return bytearray(2**31)")
    assert (g.score, g.detail) == (0.0, "exceeded memory limit")
    g = grade(PythonCheck(tests="pass", memory_mb=128), "x = bytearray(256 * 1024 * 1024)")
    assert (g.score, g.detail) == (0.0, "exceeded memory limit")


def test_python_sees_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-secret")
    leak = "import os\ndef f():\n    return os.environ.get('OPENAI_API_KEY')"
    assert grade(PythonCheck(tests="assert f() is None", entry_point="f"), leak).passed
    steal = grade(PythonCheck(tests="assert f() is not None", entry_point="f"), leak)
    assert steal.detail == "tests failed: AssertionError (line 1: assert f() is not None)"
    only_path = "import os\nassert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LC_CTYPE'}, sorted(os.environ)"
    assert grade(PythonCheck(tests="pass"), only_path).passed


def test_python_files_land_in_a_removed_temp_dir(tmp_path: Path) -> None:
    report = tmp_path / "cwd.txt"
    answer = (f"import os\nwith open('out.txt', 'w') as fh:\n    fh.write('data')\n"
              f"with open({str(report)!r}, 'w') as fh:\n    fh.write(os.getcwd())\n")
    g = grade(PythonCheck(tests="assert open('out.txt').read() == 'data'"), answer)
    assert g.passed, g.detail
    child_cwd = Path(report.read_text())
    assert child_cwd != Path.cwd()
    assert not child_cwd.exists()  # the working directory and out.txt are gone
    assert not (Path.cwd() / "out.txt").exists()


@pytest.mark.anyio
async def test_grade_async() -> None:
    assert (await grade_async(PythonCheck(tests=DOUBLE_TESTS, entry_point="f"), CODE_ANSWER)).passed
    assert (await grade_async(NumberCheck(answer=72), GSM8K_ANSWER)).passed
    assert (await grade_async(ExactCheck(answer="x"), None)).detail == "no answer"


# suites ------------------------------------------------------------------------------------------------


def write_suite(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = [
    '{"id": "gsm-1", "task": "How many clips?", "check": {"type": "number", "answer": 72}}',
    '',
    '{"id": "cap", "task": "Capital of France?", "check": {"type": "exact", "answer": "Paris"}}',
    '{"id": "re", "task": "Name a colour", "check": {"type": "regex", "pattern": "(?i)red|blue"}}',
    '   ',
    '{"id": "py", "task": "Write f", "check": {"type": "python", "tests": "assert f(2) == 4", "entry_point": "f"}}',
]


def test_load_suite(tmp_path: Path) -> None:
    tasks = load_suite(write_suite(tmp_path, *GOOD))
    assert [t.id for t in tasks] == ["gsm-1", "cap", "re", "py"]
    assert isinstance(tasks[0].check, NumberCheck) and tasks[0].check.answer == 72
    assert isinstance(tasks[3].check, PythonCheck) and tasks[3].check.timeout_s == 10
    assert grade(tasks[3].check, CODE_ANSWER).passed


def suite_error(tmp_path: Path, *lines: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_suite(write_suite(tmp_path, *lines))
    return str(info.value)


def test_suite_bad_json(tmp_path: Path) -> None:
    msg = suite_error(tmp_path, GOOD[0], '{"id": "x", "task": ', GOOD[2])
    assert msg.startswith(f"{tmp_path / 'suite.jsonl'}:2: not valid JSON: ")
    assert "suite.jsonl:1" not in msg and "suite.jsonl:3" not in msg
    assert "suite.jsonl:1: expected a JSON object" in suite_error(tmp_path, "[1, 2]")


def test_suite_missing_field(tmp_path: Path) -> None:
    msg = suite_error(tmp_path, GOOD[0], GOOD[2], '{"id": "n", "task": "t", "check": {"type": "number"}}')
    assert msg.endswith("suite.jsonl:3: field 'check.answer': Field required")
    assert "suite.jsonl:1: field 'task': Field required" in suite_error(tmp_path, '{"id": "n", "check": {}}')


def test_suite_unknown_check_type_and_key(tmp_path: Path) -> None:
    msg = suite_error(tmp_path, '{"id": "a", "task": "t", "check": {"type": "fuzzy", "answer": "x"}}')
    assert "suite.jsonl:1: field 'check': " in msg and "'fuzzy'" in msg
    msg = suite_error(tmp_path, '{"id": "a", "task": "t", "check": {"type": "exact", "answer": "x", "nocase": true}}')
    assert "suite.jsonl:1: field 'check.nocase': Extra inputs are not permitted" in msg


def test_suite_invalid_regex(tmp_path: Path) -> None:
    msg = suite_error(tmp_path, GOOD[0], '{"id": "r", "task": "t", "check": {"type": "regex", "pattern": "(unclosed"}}')
    assert "suite.jsonl:2: field 'check.pattern': " in msg and "invalid regular expression" in msg


def test_suite_duplicate_ids(tmp_path: Path) -> None:
    msg = suite_error(tmp_path, GOOD[0], GOOD[2], GOOD[0])
    assert msg.endswith("suite.jsonl:3: field 'id': duplicate id 'gsm-1' (first on line 1)")


def test_suite_empty_or_missing(tmp_path: Path) -> None:
    assert "has no tasks" in suite_error(tmp_path, "", "  ")
    with pytest.raises(ConfigError, match="cannot read the suite"):
        load_suite(tmp_path / "absent.jsonl")


def test_suite_reports_every_bad_line(tmp_path: Path) -> None:
    msg = suite_error(tmp_path, "nope", GOOD[0], "{}")
    assert msg.splitlines()[0].endswith("suite.jsonl:1: not valid JSON: Expecting value at column 1")
    assert all(":3: field " in line for line in msg.splitlines()[1:])
    assert os.path.basename(str(tmp_path / "suite.jsonl")) in msg
