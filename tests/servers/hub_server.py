"""A stand-in for the Hugging Face Hub on 127.0.0.1, so tests run the real huggingface_hub download path.

It serves what huggingface_hub (2.x, and the 0.x/1.x line) calls to find and fetch a file:

- ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{revision}``: the repo info with its
  ``sha`` and ``siblings`` (sizes and LFS data with ``?blobs=true``), as ``HfApi.model_info`` reads it;
- ``HEAD`` and ``GET /{repo}/resolve/{revision}/{filename}``: the file, with the headers
  ``hf_hub_download`` requires (``X-Repo-Commit``, ``ETag``, ``Content-Length``);
- 404 with the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), which
  huggingface_hub turns into its typed errors.

Every request is counted by kind (``info``, ``head``, ``download``, ``other``) so a test can assert that a
cached file costs no request. Point a process at it with ``HF_ENDPOINT=server.url`` (huggingface_hub reads
that variable when it is imported, so set it in a subprocess's environment).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

Content = Path | bytes


def _sha256(content: Content) -> str:
    digest = hashlib.sha256()
    if isinstance(content, bytes):
        digest.update(content)
    else:
        with content.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _size(content: Content) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


class HubServer:
    """Serves `repos` ({repo id: {file name: bytes or a Path}}) at one commit per repo, branch `main`."""

    def __init__(self, repos: Mapping[str, Mapping[str, Content]], host: str = "127.0.0.1", port: int = 0) -> None:
        self.repos = {repo: dict(files) for repo, files in repos.items()}
        self.host, self.port = host, port
        self.commits = {repo: hashlib.sha1(repo.encode() + b"".join(sorted(f.encode() for f in files)),
                                           usedforsecurity=False).hexdigest()
                        for repo, files in self.repos.items()}
        self._sha: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []  # (method, path), for a failing test's message
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._app = Starlette(routes=[
            Route("/api/models/{ns}/{name}", self._info),
            Route("/api/models/{ns}/{name}/revision/{revision}", self._info),
            Route("/{ns}/{name}/resolve/{revision}/{filename:path}", self._resolve, methods=["GET", "HEAD"]),
        ])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {k: self._counts[k] for k in ("info", "head", "download", "other")}

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 10.0) -> HubServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._counted, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", interface="asgi3")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]},
                                        name=f"hub-stand-in-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub stand-in failed to start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (idempotent): later requests find nothing listening, like a machine offline."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._uvicorn = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ the Hub's API

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = str(scope["method"]), str(scope["path"])
            kind = ("info" if path.startswith("/api/models/") else
                    ("head" if method == "HEAD" else "download") if "/resolve/" in path else "other")
            with self._lock:
                self._counts[kind] += 1
                self.requests.append((method, path))
        await self._app(scope, receive, send)

    def _error(self, code: str, message: str, repo: str | None = None) -> Response:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if repo is not None:
            headers["X-Repo-Commit"] = self.commits[repo]
        return JSONResponse({"error": message}, status_code=404, headers=headers)

    def _lookup(self, request: Request) -> tuple[str, Response | None]:
        repo = f"{request.path_params['ns']}/{request.path_params['name']}"
        if repo not in self.repos:
            return repo, self._error("RepoNotFound", "Repository not found")
        revision = request.path_params.get("revision", "main")
        if revision not in ("main", self.commits[repo]):
            return repo, self._error("RevisionNotFound", "Invalid rev id: " + revision)
        return repo, None

    def _file_sha(self, repo: str, filename: str) -> str:
        with self._lock:
            known = self._sha.get((repo, filename))
        if known is None:
            known = _sha256(self.repos[repo][filename])
            with self._lock:
                self._sha[(repo, filename)] = known
        return known

    async def _info(self, request: Request) -> Response:
        repo, error = self._lookup(request)
        if error is not None:
            return error
        blobs = request.query_params.get("blobs") == "true"
        siblings = []
        for filename, content in sorted(self.repos[repo].items()):
            sibling: dict[str, object] = {"rfilename": filename}
            if blobs:
                size = _size(content)
                sibling.update(size=size, blobId=hashlib.sha1(filename.encode(), usedforsecurity=False).hexdigest())
                if filename.endswith(".gguf"):
                    sibling["lfs"] = {"sha256": self._file_sha(repo, filename), "size": size, "pointerSize": 134}
            siblings.append(sibling)
        return JSONResponse({"_id": self.commits[repo][:24], "id": repo, "modelId": repo, "private": False,
                             "sha": self.commits[repo], "tags": ["gguf"], "siblings": siblings})

    async def _resolve(self, request: Request) -> Response:
        repo, error = self._lookup(request)
        if error is not None:
            return error
        filename = request.path_params["filename"]
        content = self.repos[repo].get(filename)
        if content is None:
            return self._error("EntryNotFound", f"{filename} does not exist on \"main\"", repo)
        headers = {"X-Repo-Commit": self.commits[repo], "ETag": f'"{self._file_sha(repo, filename)}"',
                   "Content-Length": str(_size(content)), "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return Response(b"", headers=headers)
        if isinstance(content, bytes):
            return Response(content, headers=headers, media_type="application/octet-stream")
        return FileResponse(content, headers=headers, media_type="application/octet-stream")
