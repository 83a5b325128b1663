"""An in-process GGUF model through llama-cpp-python, safe to call from the event loop.

A `Llama` call blocks and cannot be interrupted, so each call runs off the event loop, one at a time
per instance. Every call of an instance runs on the same dedicated thread: llama.cpp's OpenMP runtime
keeps a thread team per calling thread, and calls arriving from different pool threads left extra
teams that oversubscribed the cores (decode fell from 89 to 30 tok/s in bench.decode_probe).
llama-cpp-python reuses the longest common token prefix with the previous call on the same instance,
which is why the planner keeps an instance of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


@dataclass
class LocalReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str | None


class LocalModel:
    def __init__(self, path: Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = -1) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1  # llama.cpp's default is half the cores
        self.n_gpu_layers = n_gpu_layers
        self._llama: Any = None
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{path.stem[:20]}")
        self.offloaded = False

    def _load(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            layers = self.n_gpu_layers if gpu_offload_supported() else 0
            started = time.perf_counter()
            self._llama = Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                n_threads_batch=self.n_threads, n_gpu_layers=layers, verbose=False)
            self.offloaded = layers != 0
            log.info("loaded %s in %.2fs (n_ctx=%d, threads=%d, gpu_layers=%d)", self.path.name,
                     time.perf_counter() - started, self.n_ctx, self.n_threads, layers)
        return self._llama

    def load(self) -> None:
        with self._lock:
            self._load()

    def _chat_blocking(self, messages: list[dict[str, str]], params: dict[str, Any]) -> LocalReply:
        with self._lock:
            llama = self._load()
            started = time.perf_counter()
            out = llama.create_chat_completion(messages=messages, **params)
            latency = time.perf_counter() - started
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return LocalReply(text=choice["message"]["content"] or "", prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)), latency_s=latency,
                          finish_reason=choice.get("finish_reason"))

    def _tokenize_blocking(self, texts: list[str]) -> list[list[int]]:
        with self._lock:
            llama = self._load()
            return [llama.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in texts]

    def _detokenize_blocking(self, tokens: list[int]) -> str:
        with self._lock:
            # a cut may fall inside a multi-byte character: drop its stray bytes
            return bytes(self._load().detokenize(tokens)).decode("utf-8", errors="ignore")

    async def tokenize(self, texts: list[str]) -> list[list[int]]:
        """The model's own tokens of each text (no BOS), on the instance's thread."""
        return await asyncio.wrap_future(self._thread.submit(self._tokenize_blocking, texts))

    async def detokenize(self, tokens: list[int]) -> str:
        return await asyncio.wrap_future(self._thread.submit(self._detokenize_blocking, tokens))

    async def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens a chat prompt takes: its contents plus an allowance for the chat template's markers
        (about 5 a message in ChatML; 16 covers templates that add more)."""
        counts = await self.tokenize([m.get("content") or "" for m in messages])
        return sum(len(c) for c in counts) + 16 * (len(messages) + 1)

    async def chat(self, messages: list[dict[str, str]], **params: Any) -> LocalReply:
        # A cancelled caller returns at once; the call itself ends within its max_tokens, and the
        # single thread keeps the next call from overlapping it.
        future = self._thread.submit(self._chat_blocking, messages, params)
        return await asyncio.wrap_future(future)

