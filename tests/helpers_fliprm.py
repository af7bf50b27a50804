"""Helpers shared by test modules (importable from any folder under tests/: pyproject's
``pythonpath = ["tests"]`` puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
# test files live in folders mirroring src/fliprm, so paths start from the tests root, not
# from the test file
FIXTURES = TESTS / "fixtures"


def shown_response(request) -> str:
    """The response text a FLIP prompt shows the judge (between ``<response>`` and
    ``</response>``), for fake backends that answer from what they were shown."""
    text = request.messages[-1]["content"]
    if "<response>\n" in text:
        return text.split("<response>\n", 1)[1].split("\n</response>", 1)[0]
    return text.split("[Response]\n", 1)[-1].split("\n\n[", 1)[0]


class Borrowed:
    """A shared backend (the session's model), minus aclose: the fixture owns its lifetime."""

    def __init__(self, backend):
        self._b = backend

    def __getattr__(self, name):
        return getattr(self._b, name)

    async def aclose(self) -> None:
        return None


def chat_reply(content: str, usage: bool = True) -> dict:
    """An OpenAI chat-completions reply whose message is ``content``."""
    reply: dict = {"choices": [{"message": {"content": content}, "finish_reason": "stop"}]}
    if usage:
        reply["usage"] = {"prompt_tokens": 10, "completion_tokens": 5}
    return reply


class OpenAIStandIn:
    """A real HTTP server on 127.0.0.1 standing in for an OpenAI-compatible engine: every POST
    body is kept in ``bodies`` and answered with ``reply(body)``; GET answers ``gets[path]``
    (e.g. llama.cpp's ``/props``) or else ``models`` (404 when None); both are attributes a
    test may swap (a model changed under the same name). ``drop_first_gets`` closes that many
    GETs unanswered (a server going away)."""

    def __init__(self, reply, models=None, drop_first_gets: int = 0, gets=None) -> None:
        import http.server
        import json
        import threading

        outer = self
        self.bodies: list[dict] = []
        self.drop_gets = drop_first_gets
        self.models = models
        self.gets = dict(gets or {})

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if outer.drop_gets > 0:
                    outer.drop_gets -= 1
                    self.close_connection = True
                    return
                if self.path in outer.gets:
                    self._send(outer.gets[self.path])
                    return
                if outer.models is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self._send(outer.models)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                self._send(reply(body))

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FliprmStandIn:
    """A stand-in ``fliprm serve`` on 127.0.0.1 for client-side tests: POST /v1/score is
    answered with ``reply(body)`` (any JSON value, NaN included, so malformed replies can be
    scripted), GET /health with ``health`` (404 when None). Bodies are kept in ``bodies``."""

    def __init__(self, reply, health=None) -> None:
        import http.server
        import json
        import threading

        outer = self
        self.bodies: list[dict] = []
        self.health = health

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, obj, status: int = 200) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path != "/health" or outer.health is None:
                    self._send({"detail": "Not Found"}, 404)
                    return
                self._send(outer.health)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                self._send(reply(body))

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SlowServer:
    """A raw HTTP server on 127.0.0.1 that never finishes a reply, for deadline tests.

    ``mode="hang"`` reads each request and never answers; ``"trickle"`` sends a 200 header
    promising a large JSON body, then one space per second; ``"busy"`` answers 503 (``status``)
    with ``Retry-After: 3600``. ``requests`` counts the requests read."""

    def __init__(self, mode: str, status: int = 503) -> None:
        import socket
        import threading

        self.mode, self.status = mode, status
        self.requests = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # the 0.2 s accept timeout, or closed
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        conn.settimeout(0.5)
        try:
            while not self._stop.is_set():
                data = b""
                while b"\r\n\r\n" not in data and not self._stop.is_set():
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        chunk = None
                    if chunk == b"":
                        return
                    data += chunk or b""
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(body) < length and not self._stop.is_set():
                    try:
                        body += conn.recv(65536)
                    except OSError:
                        pass
                self.requests += 1
                if self.mode == "busy":
                    conn.sendall(f"HTTP/1.1 {self.status} Busy\r\nRetry-After: 3600\r\n"
                                 "Content-Length: 0\r\n\r\n".encode())
                    continue
                if self.mode == "trickle":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 100000\r\n\r\n")
                while not self._stop.wait(1.0):
                    if self.mode == "trickle":
                        conn.sendall(b" ")
                return
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


#: the instruction of :func:`score_overlong_recipe`
RECIPE = "Write a long recipe for tomato sauce."


def score_overlong_recipe(n_ctx: int = 1024, **reward_kw):
    """Score a ~8,500-character recipe (120 steps) against :data:`RECIPE` with the real
    embedded model on a context of ``n_ctx`` tokens that the response alone overflows, and
    return the result (the overflow itself is checked here, so no caller tests a fit).

    >>> r = score_overlong_recipe(method="f1", max_tokens=32)  # doctest: +SKIP
    """
    from fliprm import FlipReward
    from fliprm.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(n_ctx=n_ctx)
    response = " ".join(f"Step {i}: stir the sauce for {i} minutes, then add {i} pinches of "
                        "salt." for i in range(120))
    rm = FlipReward(backend, **reward_kw)
    try:
        (r,) = rm.score([RECIPE], [response])
        assert backend.count_tokens(response) > n_ctx
    finally:
        rm.close()
    return r


def expected_reward(res, instruction: str) -> float:
    """The reward a result must carry, recomputed from its own parts by the method's formula
    (F1 of the inferred vs. the real instruction; exp(mean log-prob); sigmoid(PMI), with
    PMI = log-prob - baseline). A real model's values are unknown in advance, but the reward
    must follow from them exactly.

    >>> from fliprm import FlipResult
    >>> expected_reward(FlipResult(reward=0.5, method="pmi", logprob=-1.0,
    ...                            extra={"pmi": 0.0, "baseline_logprob": -1.0}), "x")
    0.5
    """
    import math

    from fliprm import f1_score

    if res.method == "f1":
        return f1_score(res.inferred_instruction, instruction).f1
    if res.method == "likelihood":
        return math.exp(res.logprob)
    assert res.method == "pmi", res.method
    assert math.isclose(res.extra["pmi"], res.logprob - res.extra["baseline_logprob"],
                        rel_tol=1e-9, abs_tol=1e-12), res.extra
    return 1.0 / (1.0 + math.exp(-res.extra["pmi"]))


def flip_json(instr: str, reasoning: str = "because") -> str:
    """A FLIP judge's JSON answer inferring ``instr``."""
    import json

    return json.dumps({"REASONING": reasoning, "INFERRED INSTRUCTION": instr})


def served_reward(monkeypatch, args: list[str], env: dict[str, str]):
    """The FlipReward that ``fliprm serve ARGS`` would serve under ``env`` (no uvicorn), with
    the exit result: ``(result, reward or None)``. The options reaching ``create_app`` are left
    on ``served_reward.options``.

    >>> res, rm = served_reward(monkeypatch, ["-b", "fake", "--no-cache"], {})  # doctest: +SKIP
    """
    import os

    import uvicorn
    from typer.testing import CliRunner

    import fliprm.server
    from fliprm.cli.main import _register, app

    seen: dict = {}

    def create_app(reward, options=None, **kw):
        seen["options"] = {**(options.model_dump() if options is not None else {}), **kw}
        return seen.setdefault("rm", reward)

    monkeypatch.setattr(fliprm.server, "create_app", create_app)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: None)
    _register()
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLIPRM_")}
    res = CliRunner().invoke(app, ["serve", *args], env={**base, **env})
    served_reward.options = seen.get("options")  # type: ignore[attr-defined]
    return res, seen.get("rm")


def score_app():
    """A typer app with only ``fliprm score`` (and a no-op, so typer keeps the subcommand).

    >>> CliRunner().invoke(score_app(), ["score", "--help"]).exit_code  # doctest: +SKIP
    0
    """
    import typer

    from fliprm.cli import score as score_cli

    app = typer.Typer()
    score_cli.register(app)

    @app.command()
    def _noop() -> None:  # a second command keeps typer from collapsing to a single command
        pass

    return app
