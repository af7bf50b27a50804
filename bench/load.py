"""Load-test `fliprm serve`: many concurrent clients on 127.0.0.1, bounded in count and time.

    python bench/load.py                       # in-thread server over a fake judge (no model)
    python bench/load.py --embedded --requests 48 --clients 1,8,32
    python bench/load.py --url http://127.0.0.1:8080 --api-key KEY
    python bench/load.py --json out.json
    python bench/load.py --stalled 300 --stalled-clients 100   # slowloris + normal clients

Each scenario sends ``--requests`` single-item requests from N concurrent clients and reports:
requests/s, p50/p99 latency of answered requests, the 503 (queue full) rate, other status codes,
how many backend batches served them (micro-batching), the deepest queue seen by a poller, and
the peak RSS of the process (the server runs in it unless --url). The last scenario shrinks the
server's queue so that 503s must appear.

``--stalled N`` runs another scenario instead: ``fliprm serve -b fake`` as a process limited to
``--nofile`` open files (256), N sockets that connect, send part of a request header and then
nothing, and meanwhile ``--stalled-clients`` normal clients (one request each, all at once)
plus a /health probe (2 s timeout). It reports the normal requests answered, their p50/p99,
the stalled sockets the server closed within ``--header-timeout`` (+1 s), and how long that
took. Checks: every normal request gets 200, /health answers 200, every stalled socket is
closed within the timeout, the server exits 0 on SIGTERM.

Checks, per scenario (a failure is printed and makes the exit code 1):
- every request gets exactly one reply, and the server's own request counter agrees;
- with the fake judge, each 200 reply carries *its own* item's reward: the judge echoes the
  response as the inferred instruction, and every request's instruction equals its response
  and differs from every other request's, so a reply routed to the wrong request scores < 1;
- the queue never grows past its bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table


def _metric(text: str, name: str, label: str = "") -> float:
    """Sum of a Prometheus metric's samples whose labels contain ``label``."""
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + " ") or line.startswith(name + "{")) and label in line:
            total += float(line.split()[-1])
    return total


@dataclass
class Scenario:
    name: str
    clients: int
    requests: int
    max_queue_items: int | None = None
    sent: int = 0
    codes: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    batches: float = 0.0
    server_requests: float = 0.0
    max_queue_seen: float = 0.0
    wrong_replies: int = 0
    peak_rss_mb: float = 0.0
    problems: list[str] = field(default_factory=list)


async def drive(url: str, sc: Scenario, key: str | None, route: str, check_echo: bool) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    todo = iter(range(sc.requests))
    limits = httpx.Limits(max_connections=sc.clients + 2)

    async def worker(c: httpx.AsyncClient) -> None:
        for i in todo:
            words = f"write note number {i} about topic {i * 7919 % 1000}"
            if route == "get_reward":
                body: dict[str, Any] = {"query": [words], "prompts": [""], "labels": [words]}
                path = "/get_reward"
            else:
                body = {"items": [{"instruction": words, "response": words}]}
                path = "/v1/score"
            t0 = time.perf_counter()
            sc.sent += 1
            try:
                r = await c.post(url + path, json=body)
            except httpx.HTTPError as exc:
                sc.codes[-1] = sc.codes.get(-1, 0) + 1
                sc.problems.append(f"request {i}: {type(exc).__name__}")
                continue
            sc.codes[r.status_code] = sc.codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                sc.latencies.append(time.perf_counter() - t0)
                if check_echo:
                    data = r.json()
                    reward = (
                        data["rewards"][0] if route == "get_reward"
                        else data["results"][0]["reward"]
                    )
                    if reward != 1.0:
                        sc.wrong_replies += 1

    async def poll_queue(c: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                text = (await c.get(url + "/metrics")).text
                sc.max_queue_seen = max(sc.max_queue_seen, _metric(text, "fliprm_queue_depth"))
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=900, headers=headers, limits=limits) as c:
        before = (await c.get(url + "/metrics")).text
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_queue(c, stop))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(sc.clients)))
        sc.wall_s = time.perf_counter() - t0
        stop.set()
        await poller
        after = (await c.get(url + "/metrics")).text
    sc.batches = _metric(after, "fliprm_batches_total") - _metric(before, "fliprm_batches_total")
    # only the scoring route: the poller's /metrics calls are counted too
    lab = f'route="{"/get_reward" if route == "get_reward" else "/v1/score"}"'
    sc.server_requests = (
        _metric(after, "fliprm_requests_total", lab) - _metric(before, "fliprm_requests_total", lab)
    )
    answered = sum(sc.codes.values())
    if answered != sc.requests or sc.sent != sc.requests:
        sc.problems.append(f"{sc.requests} requests, {answered} replies")
    if sc.server_requests and sc.server_requests != sc.requests:
        sc.problems.append(f"server counted {sc.server_requests:g} requests, sent {sc.requests}")
    if sc.wrong_replies:
        sc.problems.append(f"{sc.wrong_replies} replies carried another request's reward")
    if sc.max_queue_items is not None and sc.max_queue_seen > sc.max_queue_items:
        sc.problems.append(f"queue reached {sc.max_queue_seen:g} > bound {sc.max_queue_items}")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_thread(args: argparse.Namespace, scenarios: list[Scenario]) -> None:
    from fliprm import FlipReward
    from fliprm.backends.fake import FakeBackend
    from fliprm.server import ServerThread, create_app

    if args.embedded:
        reward = FlipReward("embedded", template="flip-short", max_tokens=64)
    else:
        def echo(req: Any) -> str:
            # the response, as the template shows it between <response> and </response>
            text = req.messages[-1]["content"].split("<response>\n", 1)[1]
            return json.dumps({"INFERRED INSTRUCTION": text.split("\n</response>", 1)[0]})

        reward = FlipReward(FakeBackend(echo, delay_s=args.fake_delay, max_concurrency=1),
                            template="flip-short")
    for sc in scenarios:
        opts = {} if sc.max_queue_items is None else {"max_queue_items": sc.max_queue_items}
        with ServerThread(create_app(reward, **opts)) as srv:
            asyncio.run(drive(srv.url, sc, None, args.route, check_echo=not args.embedded))
        sc.peak_rss_mb = _rss_mb()


@dataclass
class StalledScenario:
    stalled: int
    clients: int
    header_timeout: float
    nofile: int
    codes: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    health_status: int = -1
    health_s: float = 0.0
    close_s: list[float] = field(default_factory=list)
    closed_by_server: dict[str, float] = field(default_factory=dict)
    max_connections: float = 0.0
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)


#: run ``fliprm`` with at most N open files (argv: N, then the CLI's arguments)
_LIMITED = (
    "import resource, sys; n = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "from fliprm.cli.main import main; main()"
)


def _watch_closes(socks: list[Any], opened: list[float], limit_s: float) -> list[float]:
    """Seconds from each socket's opening to the server closing it (until ``limit_s``)."""
    import selectors

    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    out: list[float] = []
    t0 = time.monotonic()
    while len(out) < len(socks) and time.monotonic() - t0 < limit_s:
        for key, _ in sel.select(0.02):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                out.append(time.monotonic() - opened[key.data])
                sel.unregister(key.fileobj)
    sel.close()
    return out


def run_stalled(args: argparse.Namespace) -> StalledScenario:
    import os
    import signal
    import socket
    import subprocess
    import threading

    sc = StalledScenario(args.stalled, args.stalled_clients, args.header_timeout, args.nofile)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FLIPRM_FAKE_DELAY_S": str(args.fake_delay)}
    env.pop("FLIPRM_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _LIMITED, str(args.nofile), "serve", "-b", "fake", "--port",
         str(port), "--header-timeout", str(args.header_timeout), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    socks: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                done = proc.poll() is not None
                out = proc.stdout.read().decode() if done and proc.stdout else ""
                raise RuntimeError(f"fliprm serve did not start: {out[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        opened = []
        for _ in range(args.stalled):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(sock)
            opened.append(time.monotonic())
        watcher = threading.Thread(target=lambda: sc.close_s.extend(
            _watch_closes(socks, opened, args.header_timeout + 5)))
        watcher.start()

        async def normal(c: httpx.AsyncClient, i: int) -> None:
            words = f"write note number {i} about topic {i * 7919 % 1000}"
            t0 = time.perf_counter()
            try:
                r = await c.post(url + "/v1/score",
                                 json={"items": [{"instruction": words, "response": words}]})
            except httpx.HTTPError as exc:
                sc.codes[-1] = sc.codes.get(-1, 0) + 1
                sc.problems.append(f"normal request {i}: {type(exc).__name__}")
                return
            sc.codes[r.status_code] = sc.codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                sc.latencies.append(time.perf_counter() - t0)

        async def health(c: httpx.AsyncClient) -> None:
            t0 = time.perf_counter()
            try:
                sc.health_status = (await c.get(url + "/health", timeout=2)).status_code
            except httpx.HTTPError:
                sc.health_status = -1
            sc.health_s = time.perf_counter() - t0

        async def main() -> None:
            limits = httpx.Limits(max_connections=args.stalled_clients + 1)
            async with httpx.AsyncClient(timeout=30, limits=limits) as c:
                await asyncio.gather(health(c), *(normal(c, i) for i in range(sc.clients)))

        asyncio.run(main())
        watcher.join()
        try:
            text = httpx.get(url + "/metrics", timeout=5).text
        except httpx.HTTPError as exc:
            text = ""
            sc.problems.append(f"/metrics: {type(exc).__name__}")
        for reason in ("header_timeout", "evicted", "refused"):
            sc.closed_by_server[reason] = _metric(
                text, "fliprm_connections_closed_total", f'reason="{reason}"')
        sc.max_connections = _metric(text, "fliprm_max_connections")
    finally:
        for sock in socks:
            sock.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sc.exit_code = proc.returncode
    if sc.codes.get(200, 0) != sc.clients:
        sc.problems.append(f"{sc.codes.get(200, 0)}/{sc.clients} normal requests got 200")
    if sc.health_status != 200:
        sc.problems.append(f"/health answered {sc.health_status}")
    late = [t for t in sc.close_s if t > sc.header_timeout + 1.0]
    if len(sc.close_s) != sc.stalled or late:
        sc.problems.append(f"{sc.stalled - len(sc.close_s) + len(late)} stalled sockets not "
                           f"closed within {sc.header_timeout:g}+1 s")
    if sc.exit_code != 0:
        sc.problems.append(f"server exit code {sc.exit_code} on SIGTERM")
    return sc


def print_stalled(sc: StalledScenario) -> None:
    lat = sorted(sc.latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0] if lat else 0.0] * 99
    close = sorted(sc.close_s)
    within = sum(t <= sc.header_timeout + 1.0 for t in close)
    t = Table(title=f"fliprm serve -b fake, ulimit -n {sc.nofile} (max connections "
              f"{sc.max_connections:g}), header timeout {sc.header_timeout:g} s: "
              f"{sc.stalled} stalled sockets + {sc.clients} normal clients")
    for col in ("normal answered", "p50 s", "p99 s", "/health", "stalled closed in time",
                "close s median / max", "server closed (timeout/evicted/refused)", "exit",
                "checks"):
        t.add_column(col, justify="left" if col == "checks" else "right")
    t.add_row(
        f"{sc.codes.get(200, 0)}/{sc.clients}" + (f" {json.dumps(sc.codes)}"
                                                  if set(sc.codes) - {200} else ""),
        f"{q[49]:.3f}", f"{q[98]:.3f}", f"{sc.health_status} in {sc.health_s:.2f} s",
        f"{within}/{sc.stalled}",
        f"{statistics.median(close):.2f} / {close[-1]:.2f}" if close else "-",
        "/".join(f"{sc.closed_by_server.get(k, 0):g}"
                 for k in ("header_timeout", "evicted", "refused")),
        str(sc.exit_code), "ok" if not sc.problems else "; ".join(sc.problems[:3]),
    )
    Console(width=220).print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", help="an already running fliprm serve (else one runs in-thread)")
    ap.add_argument("--api-key")
    ap.add_argument("--embedded", action="store_true", help="in-thread server on the real model")
    ap.add_argument("--clients", default="1,16,128", help="comma list of concurrent clients")
    ap.add_argument("--requests", type=int, default=512, help="requests per scenario")
    ap.add_argument("--route", choices=["score", "get_reward"], default="get_reward")
    ap.add_argument("--fake-delay", type=float, default=0.01, help="fake judge seconds per call")
    ap.add_argument("--small-queue", type=int, default=8,
                    help="queue bound of the last scenario (0: skip it)")
    ap.add_argument("--json")
    ap.add_argument("--stalled", type=int, default=0,
                    help="run the stalled-sockets scenario with this many stalled sockets")
    ap.add_argument("--stalled-clients", type=int, default=100,
                    help="normal clients during the stalled-sockets scenario")
    ap.add_argument("--header-timeout", type=float, default=2.0,
                    help="the server's --header-timeout in the stalled-sockets scenario")
    ap.add_argument("--nofile", type=int, default=256,
                    help="the server's open-file limit in the stalled-sockets scenario")
    args = ap.parse_args()
    if args.stalled:
        stalled = run_stalled(args)
        print_stalled(stalled)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(asdict(stalled) | {"latencies": None}, f, indent=2)
        return 0 if not stalled.problems else 1
    counts = [int(x) for x in args.clients.split(",")]
    scenarios = [Scenario(f"{n} clients", n, args.requests) for n in counts]
    if args.small_queue and not args.url:
        scenarios.append(Scenario(f"{max(counts)} clients, queue {args.small_queue}",
                                  max(counts), args.requests, max_queue_items=args.small_queue))
    if args.url:
        for sc in scenarios:
            asyncio.run(drive(args.url, sc, args.api_key, args.route, check_echo=False))
    else:
        run_in_thread(args, scenarios)

    judge = "remote server" if args.url else ("embedded model" if args.embedded else
                                              f"fake judge, {args.fake_delay * 1000:g} ms/call")
    t = Table(title=f"fliprm serve under load ({judge}, route {args.route})")
    for col in ("scenario", "req/s", "p50 s", "p99 s", "503 rate", "other codes", "batches",
                "max queue", "peak RSS MB", "checks"):
        t.add_column(col, justify="left" if col in ("scenario", "checks") else "right")
    ok = True
    for sc in scenarios:
        lat = sorted(sc.latencies)
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0] if lat else 0.0] * 99
        other = {k: v for k, v in sc.codes.items() if k not in (200, 503)}
        ok &= not sc.problems
        t.add_row(
            sc.name, f"{sc.requests / sc.wall_s:.1f}", f"{q[49]:.3f}", f"{q[98]:.3f}",
            f"{sc.codes.get(503, 0) / sc.requests:.1%}", json.dumps(other) if other else "-",
            f"{sc.batches:g}", f"{sc.max_queue_seen:g}", f"{sc.peak_rss_mb:.0f}",
            "ok" if not sc.problems else "; ".join(sc.problems[:3]),
        )
    Console(width=200).print(t)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(sc) | {"latencies": None} for sc in scenarios], f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
