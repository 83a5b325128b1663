"""The budget's prompt estimate is an upper bound for text in any script, checked against a real tokenizer."""

from __future__ import annotations

import pytest
from llama_cpp import Llama

from conductor_mcp.models import WorkerSpec
from conductor_mcp.runs.budget import estimate_tokens
from conductor_mcp.workers.registry import bundled_gguf_path

TEXTS = {
    "cjk": "请用三句话解释量子纠缠，并给出一个日常生活中的类比。東京の天気はどうですか？한국어로 대답해 주세요.",
    "digits": "3.14159 2.71828 1.41421 " * 20,
    "emoji": "🙂🚀🌍 ✅ 🧪🔬" * 10,
    "english": "Summarise the following paragraph in one sentence, keeping every number exact. " * 5,
}


@pytest.fixture(scope="module")
def vocab() -> Llama:
    return Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)


@pytest.mark.parametrize("script", sorted(TEXTS))
def test_prompt_estimate_bounds_the_real_token_count(vocab: Llama, script: str) -> None:
    text = TEXTS[script]
    real = len(vocab.tokenize(text.encode(), add_bos=True, special=False))
    prompt, _ = estimate_tokens(WorkerSpec(id="w", model="openai/x"), [{"role": "user", "content": text}])
    assert prompt >= real, (script, prompt, real)
