"""The embedded backend runs one blocking llama.cpp call per slot at once, however many cores
the machine has (asyncio's default pool has cpu_count + 4 threads: 6 on a 2-core machine, so
slots 7 and 8 sat idle)."""

from __future__ import annotations

import asyncio
import threading

from fliprm._types import GenerateRequest
from fliprm.backends.embedded import EmbeddedBackend

SLOTS = 8


class _BarrierServer:
    """Answers only once all ``SLOTS`` calls are inside it at the same time."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(SLOTS, timeout=10)

    def handle_chat_completions(self, body: dict) -> dict:
        self.barrier.wait()
        return {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def test_every_slot_has_a_thread(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    be = EmbeddedBackend(model, n_parallel=SLOTS)
    be._server = _BarrierServer()  # loaded: start() returns at once

    async def main() -> list[str]:
        reqs = [GenerateRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4)
                for i in range(SLOTS)]
        return [c.text for c in await asyncio.gather(*(be.generate(r) for r in reqs))]

    assert asyncio.run(main()) == ["ok"] * SLOTS
