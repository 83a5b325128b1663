"""Decode speed of the bundled GGUF in a clean process (no earlier llama.cpp call colours the figure).

    python -m bench.decode_probe threads N [--busy]   # plain decode on N threads, optionally beside a busy process
    python -m bench.decode_probe overlap              # LocalModel.chat before and after two overlapping calls

`threads`: with --busy, one CPU-bound process runs beside it, as the server's event loop or any other
load would. `overlap`: LocalModel runs each call on an anyio worker thread; two overlapping calls use two
threads, and llama.cpp's OpenMP build keeps a thread team per calling thread. Prints tokens/s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import anyio

from conductor_mcp.workers.local_model import LocalModel
from conductor_mcp.workers.registry import bundled_gguf_path

MESSAGES = [{"role": "user", "content": "Tell me a long story about a robot who learns to paint."}]


def decode_rate(llama: Any, n: int = 64) -> float:
    llama.reset()
    started = time.perf_counter()
    count = 0
    for _ in llama.generate(llama.tokenize(b"Once upon a time"), temp=0.0):
        count += 1
        if count >= n:
            break
    return count / (time.perf_counter() - started)


def threads(n: int, busy: bool) -> str:
    from llama_cpp import Llama

    llama = Llama(model_path=str(bundled_gguf_path()), n_ctx=1024, n_threads=n, n_threads_batch=n, verbose=False)
    decode_rate(llama, 8)  # warm-up
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if burner is not None:
            time.sleep(0.2)
        rate = max(decode_rate(llama) for _ in range(2))
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return f"{rate:.2f}"


async def overlap() -> str:
    """Decode tokens/s (llama.cpp's counters) of 3 sequential chats, before and after 2 overlapping ones."""
    import llama_cpp

    model = LocalModel(bundled_gguf_path(), n_ctx=1024)
    model.load()
    ctx = model._llama._ctx.ctx
    # EOS suppressed so every call decodes exactly max_tokens
    params: dict[str, Any] = {"max_tokens": 64, "temperature": 0.0, "logit_bias": {model._llama.token_eos(): -100.0}}

    async def sequential() -> float:
        llama_cpp.llama_perf_context_reset(ctx)
        for _ in range(3):
            await model.chat(MESSAGES, **params)
        data = llama_cpp.llama_perf_context(ctx)
        return float(data.n_eval / (data.t_eval_ms / 1e3))

    before = await sequential()
    async with anyio.create_task_group() as tg:  # two calls at once: two anyio worker threads
        for _ in range(2):
            tg.start_soon(lambda: model.chat(MESSAGES, **params))
    after = await sequential()
    return f"{before:.2f} {after:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("threads")
    t.add_argument("n", type=int)
    t.add_argument("--busy", action="store_true")
    sub.add_parser("overlap")
    args = parser.parse_args()
    print(threads(args.n, args.busy) if args.what == "threads" else anyio.run(overlap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
