"""Install the way a user does, away from this checkout: build the wheel, install it into a fresh environment
(pip into a new venv; `uv tool install`; `uvx --from`), and drive the installed `mcp-conductor serve` over stdio
with the SDK's client.

Needs PyPI (the dependencies; CI reaches it) and takes about 2 minutes on 2 cores. llama-cpp-python is pinned
to the version in this venv and comes as a built wheel: pip takes it from its wheel cache, which installing this
venv filled, and uv gets it through --find-links from `pip wheel`, which reads that cache too; where that cache is
empty it compiles (minutes), as a user's first install does. CONDUCTOR_SKIP_INSTALL=1 skips these tests on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from conductor_mcp import __version__

from .mcp_helpers import write_manifest

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(1200)]

NAME = "mcp-conductor"  # the distribution and its command; `conductor-mcp` on PyPI is another project
ROOT = Path(__file__).parents[2]
# the Makefile's portable build, should llama.cpp compile after all (an empty pip cache)
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
LLAMA = f"llama-cpp-python=={metadata.version('llama_cpp_python')}"


def run(cmd: list[str | Path], env: dict[str, str] | None = None, timeout: float = 900) -> str:
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def install_env() -> dict[str, str]:
    if os.environ.get("CONDUCTOR_SKIP_INSTALL") == "1":
        pytest.skip("CONDUCTOR_SKIP_INSTALL=1: the install tests are skipped on request")
    return {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "UV_NO_PROGRESS": "1", "UV_PYTHON_DOWNLOADS": "never"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (the checkout gets no build/ or egg-info from it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src" / "conductor_mcp", src / "src" / "conductor_mcp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src], install_env())
    (built,) = dist.glob("*.whl")
    assert built.name.startswith("mcp_conductor-"), built.name
    return built


def serve_env(tmp_path: Path) -> dict[str, str]:
    """No API keys, a store and a manifest of the test's own: tools/list calls no worker."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("CONDUCTOR_")}
    env.update(CONDUCTOR_DB=str(tmp_path / "traces.db"),
               CONDUCTOR_WORKERS=str(write_manifest(tmp_path, "http://127.0.0.1:9/v1")))
    return env


async def assert_serves(command: str | Path, args: list[str], env: dict[str, str]) -> None:
    """`command args` speaks MCP over stdio: initialize names this server, tools/list has its tools."""
    params = StdioServerParameters(command=str(command), args=args, env=env)
    async with Client(params) as client:
        assert client.server_info is not None and client.server_info.version == __version__
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"solve", "plan_workflow", "run_step", "resume", "get_run"} <= names, names


async def test_pip_install_of_the_wheel_serves_with_the_installed_command(wheel: Path, tmp_path: Path) -> None:
    env = install_env()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, LLAMA], env)
    imported = run([venv / "bin" / "python", "-c", "import conductor_mcp; print(conductor_mcp.__file__)"])
    assert imported.startswith(str(venv)), imported  # the wheel's code, not this checkout's
    assert not (venv / "bin" / "conductor-mcp").exists()  # the other project's command: never ours
    await assert_serves(venv / "bin" / NAME, ["serve"], serve_env(tmp_path))


async def test_uv_tool_install_and_uvx_serve(wheel: Path, tmp_path: Path) -> None:
    env = install_env()
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is missing: it is in the dev extra (pip install -e '.[dev]')"
    links = tmp_path / "links"  # llama-cpp-python's built wheel, out of pip's cache, for uv to find
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", links, LLAMA], env)
    env.update(UV_TOOL_DIR=str(tmp_path / "tools"), UV_TOOL_BIN_DIR=str(tmp_path / "bin"))
    uv_args = ["--python", sys.executable, "--find-links", str(links), "--with", LLAMA]
    run([uv, "tool", "install", *uv_args, wheel], env)
    await assert_serves(tmp_path / "bin" / NAME, ["serve"], serve_env(tmp_path))
    # uvx, as a host's configuration would start it (`uvx mcp-conductor serve` once it is on PyPI)
    await assert_serves(uv, ["tool", "run", *uv_args, "--from", str(wheel), NAME, "serve"],
                        {**serve_env(tmp_path), **{k: v for k, v in env.items() if k.startswith("UV_")}})
