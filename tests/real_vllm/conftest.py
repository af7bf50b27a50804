"""A real vLLM server (CPU build) for the ``vllm``-marked tests.

These tests run only when asked, because the server costs minutes and ~7 GB to start:

* ``pytest -m vllm tests/real_vllm`` (a ``-m`` expression that selects ``vllm`` tests and not
  unmarked ones), or ``FLIPRM_VLLM_TESTS=1`` (any selection);
* anything else (the plain ``pytest -q``, ``-m "not model"``, ``-m model``) skips them, naming
  how to run them.

They need ``bash scripts/setup_vllm.sh`` (``.venv-vllm`` and the bf16 model). Without it they
skip with the reason, except under ``FLIPRM_VLLM_TESTS=1`` (CI), where a missing setup fails.

The server: ``.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 at a
free port, ``--enforce-eager`` (a compiled start recompiles every time: 5-7 min instead of
~1.5), one OpenMP thread bound to the first CPU this process may use, 2 GB of KV cache; one
server per session, stopped with SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SERVED_NAME = "qwen05"
START_TIMEOUT_S = float(os.environ.get("FLIPRM_VLLM_START_TIMEOUT", "900"))
REQUIRED = os.environ.get("FLIPRM_VLLM_TESTS") == "1"


def model_dir() -> Path:
    env = os.environ.get("FLIPRM_VLLM_MODEL_DIR")
    if env:
        return Path(env)
    from fliprm.model import cache_dir

    return cache_dir() / "vllm" / "qwen2.5-coder-0.5b-bf16"


def _selected_by_markexpr(expr: str) -> bool:
    """True for a ``-m`` expression that picks vllm tests and not unmarked ones ("vllm",
    "vllm and not slow"); false for "", "not model", "model", "not vllm"."""
    if not expr:
        return False
    try:
        from _pytest.mark.expression import Expression

        compiled = Expression.compile(expr)
        return (compiled.evaluate(lambda name, **kw: name == "vllm")
                and not compiled.evaluate(lambda name, **kw: False))
    except (ImportError, AttributeError, TypeError, ValueError):  # private API moved: read the words
        return bool(re.search(r"(?<!not )\bvllm\b", expr))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REQUIRED or _selected_by_markexpr(config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="real-vLLM test: run with `pytest -m vllm tests/real_vllm` or "
                            "FLIPRM_VLLM_TESTS=1 after `bash scripts/setup_vllm.sh` (~10 min)")
    for item in items:
        if item.get_closest_marker("vllm"):
            item.add_marker(skip)


def _missing() -> str | None:
    if not VLLM_PYTHON.exists():
        return f"{VLLM_PYTHON} missing: run `bash scripts/setup_vllm.sh`"
    if not (model_dir() / "config.json").exists():
        return f"converted model missing in {model_dir()}: run `bash scripts/setup_vllm.sh`"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (vLLM exits cleanly in seconds), then SIGKILL to the server's own process group
    (its engine core is a child process) if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


class VLLMServer:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, start_s: float) -> None:
        self.url = url  # http://127.0.0.1:PORT/v1
        self.root = url[: -len("/v1")]
        self.proc = proc
        self.log = log
        self.start_s = start_s
        self.name = SERVED_NAME

    def metric(self, name: str) -> float:
        """A counter from the server's own Prometheus ``/metrics`` (summed over labels)."""
        text = httpx.get(self.root + "/metrics", timeout=30).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + "{", name + " ")):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory):
    missing = _missing()
    if missing:
        if REQUIRED:
            pytest.fail(f"FLIPRM_VLLM_TESTS=1 but {missing}")
        pytest.skip(missing)
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cpu = min(os.sched_getaffinity(0))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": str(cpu),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model_dir()), "--served-model-name", SERVED_NAME,
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096",
           "--enforce-eager"]
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode} while starting:\n"
                            + log.read_text(errors="replace")[-4000:])
            if time.monotonic() - t0 > START_TIMEOUT_S:
                pytest.fail(f"vLLM did not answer within {START_TIMEOUT_S:.0f}s:\n"
                            + log.read_text(errors="replace")[-4000:])
            try:
                if httpx.get(url + "/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        start_s = time.monotonic() - t0
        # The first request pays for lazy initialisation (~40 s on one loaded core): not a test's.
        t1 = time.monotonic()
        r = httpx.post(url + "/completions", timeout=600,
                       json={"model": SERVED_NAME, "prompt": "Hello", "max_tokens": 1})
        r.raise_for_status()
        print(f"\n[vllm] started in {start_s:.0f}s, warm-up request {time.monotonic() - t1:.0f}s")
        yield VLLMServer(url, proc, log, start_s)
    finally:
        _stop(proc)
