"""An in-process GGUF model through llama-cpp-python, safe to call from the event loop.

A `Llama` call blocks and cannot be interrupted, so each call runs off the event loop, one at a time
per instance. Every call of an instance runs on the same dedicated thread: llama.cpp's OpenMP runtime
keeps a thread team per calling thread, and calls arriving from different pool threads left extra
teams that oversubscribed the cores (decode fell from 89 to 30 tok/s in bench.decode_probe).
llama-cpp-python reuses the longest common token prefix with the previous call on the same instance,
which is why the planner keeps an instance of its own.

A call can be watched and stopped between two tokens: the instance's `generate` is wrapped so that each
sampled token reaches the call's hook, which counts it for progress and raises GenerationStopped once
the caller has gone (cancelled, or out of time). Without that, a cancelled call would hold the thread,
and every call queued behind it, until it reached max_tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..models import Usage
from .llm import Reply

log = logging.getLogger(__name__)
TokenHook = Callable[[int], None]  # called on the model's thread with the count of tokens sampled so far


class GenerationStopped(Exception):
    """The caller stopped a generation between two tokens."""


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask: taskset, cgroup cpusets), not every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Half the usable cores. llama.cpp's threads meet at a barrier every token, so one thread that
    loses its core to another process stalls them all: with every core, a plan that took 9 s on one
    thread was still running after 90 s when another process held one of two cores (BENCHMARKS.md,
    planner threads). Half leaves room for the event loop, a second model instance (the bundled worker)
    and the rest of the machine."""
    return max(1, usable_cores() // 2)


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class LocalModel:
    def __init__(self, path: Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = -1) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.n_gpu_layers = n_gpu_layers
        self._llama: Any = None
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{path.stem[:20]}")
        self._hook: TokenHook | None = None  # the running call's, set under the lock
        self.offloaded = False

    def _load(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            layers = self.n_gpu_layers if gpu_offload_supported() else 0
            started = time.perf_counter()
            self._llama = Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                n_threads_batch=self.n_threads, n_gpu_layers=layers, verbose=False)
            self.offloaded = layers != 0
            self._watch(self._llama)
            log.info("loaded %s in %.2fs (n_ctx=%d, threads=%d, gpu_layers=%d)", self.path.name,
                     time.perf_counter() - started, self.n_ctx, self.n_threads, layers)
        return self._llama

    def _watch(self, llama: Any) -> None:
        """Pass every token that `create_chat_completion` samples (through `generate`) to the call's hook.

        An end-of-generation token is sampled too but is not part of the reply (the binding stops on it
        and usage does not count it), so the hook is not told of it: its count never passes the reply's
        completion_tokens."""
        import llama_cpp

        generate = llama.generate
        vocab = llama._model.vocab

        def watched(*args: Any, **kwargs: Any) -> Iterator[int]:
            n = 0
            for token in generate(*args, **kwargs):
                hook = self._hook
                if hook is not None and not llama_cpp.llama_vocab_is_eog(vocab, token):
                    n += 1
                    hook(n)  # may raise GenerationStopped: the binding's state stays that of the last token
                yield token

        llama.generate = watched

    def load(self) -> None:
        with self._lock:
            self._load()

    def _chat_blocking(self, messages: list[dict[str, str]], params: dict[str, Any], on_token: TokenHook | None,
                       stop: threading.Event) -> Reply:
        def hook(n: int) -> None:
            if stop.is_set():
                raise GenerationStopped(f"stopped after {n - 1} tokens: the caller has gone")
            if on_token is not None:
                on_token(n)

        with self._lock:
            if stop.is_set():  # the caller left while this call waited for the thread
                raise GenerationStopped("stopped before it started: the caller has gone")
            llama = self._load()
            started = time.perf_counter()
            self._hook = hook
            try:
                out = llama.create_chat_completion(messages=messages, **params)
            finally:
                self._hook = None
            latency = time.perf_counter() - started
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Reply(choice["message"]["content"] or "",
                     Usage(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                           completion_tokens=int(usage.get("completion_tokens", 0)), calls=1),  # unpriced
                     latency, choice.get("finish_reason"))

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

    async def chat(self, messages: list[dict[str, str]], *, on_token: TokenHook | None = None,
                   **params: Any) -> Reply:
        """One chat completion. `on_token` runs on the model's thread after each sampled token (keep it
        short; it may raise GenerationStopped to end the call). A cancelled caller returns at once and the
        call stops at its next token (the prompt's evaluation, once begun, is finished first)."""
        stop = threading.Event()
        future = self._thread.submit(self._chat_blocking, messages, params, on_token, stop)
        try:
            return await asyncio.wrap_future(future)
        except BaseException:
            stop.set()
            raise

