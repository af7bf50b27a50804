"""Options shared by every command that scores (score, eval, rerank, serve): one way to build
a backend and a FlipReward from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..backends import Backend, get_backend, is_local_model
from ..model import cache_dir
from ..reward import FlipReward
from ..templates import Template

BackendOpt = Annotated[
    str, typer.Option("--backend", "-b", help="embedded | gguf:PATH | openai[:MODEL] (fake: scripted dry run)")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="OpenAI-compatible URL, e.g. http://127.0.0.1:8000/v1")
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model name on the server")]
ApiKeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="FLIPRM_API_KEY", help="bearer token for the server")
]
ConcurrencyOpt = Annotated[
    int | None, typer.Option("--concurrency", help="calls in flight (default: backend's own)")
]
TemplateOpt = Annotated[
    str | None, typer.Option("--template", help="built-in template name (flip, flip-short, ...)")
]
SystemTemplateOpt = Annotated[
    Path | None, typer.Option("--system-template", help="system prompt file (reference style)")
]
UserTemplateOpt = Annotated[
    Path | None, typer.Option("--user-template", help="user prompt file with {response}")
]
MethodOpt = Annotated[str, typer.Option("--method", help="f1 (the paper) | likelihood")]
ParseOpt = Annotated[str, typer.Option("--parse-failure", help="raw (reference) | zero | error")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="generation cap (paper: 512)")]
TempOpt = Annotated[float, typer.Option("--temperature", help="0 = greedy (paper)")]
SeedOpt = Annotated[int | None, typer.Option("--seed")]
TruncOpt = Annotated[
    int | None, typer.Option("--max-response-chars", help="cut longer responses to head + tail")
]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache", help="SQLite response cache (default: in the fliprm cache dir)"),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="do not read or write the response cache")]
ExactOpt = Annotated[
    bool,
    typer.Option(
        "--exact",
        help="embedded model: reprocess every prompt from scratch so an item's reward does not "
        "depend on the item before it (bit-reproducible across orders, shards and actors; slower)",
    ),
]
MaskEchoOpt = Annotated[
    bool,
    typer.Option(
        "--mask-echo",
        help="mask runs of >= 6 words copied from the instruction before backward inference "
        "(defends RL rewards against responses that restate the prompt)",
    ),
]
ConstrainedOpt = Annotated[
    bool, typer.Option("--constrained/--no-constrained", help="JSON-schema-constrained output")
]


def backend_options(
    backend: str,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    exact: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``get_backend(backend, ...)`` from the CLI flags.

    Kept separate from :func:`make_backend` so the Ray path can ship them to its actors,
    which build their own backend on the worker.
    """
    opts: dict[str, Any] = {}
    if exact:
        if not is_local_model(backend):
            raise typer.BadParameter("--exact applies to the embedded model (embedded, gguf:PATH)")
        opts["reuse_prompt_cache"] = False
    if backend.startswith("openai"):
        opts.update(base_url=base_url, api_key=api_key)
        if model:
            opts["model"] = model
        if concurrency:
            opts["max_concurrency"] = concurrency
    elif backend == "fake":
        # A dry run (no model, arbitrary rewards) for checking inputs and plumbing. A
        # module-level reply function, so Ray can pickle it into actors by reference.
        from ..eval._common import fake_eval_reply

        opts.update(replies=fake_eval_reply, model_id="fake-eval")
    return opts


def make_backend(
    backend: str,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    exact: bool = False,
) -> Backend:
    return get_backend(
        backend, **backend_options(backend, base_url, model, api_key, concurrency, exact)
    )


def reward_options(
    *,
    concurrency: int | None = None,
    template: str | None = None,
    system_template: Path | None = None,
    user_template: Path | None = None,
    method: str = "f1",
    parse_failure: str = "raw",
    max_tokens: int = 512,
    temperature: float = 0.0,
    seed: int | None = None,
    max_response_chars: int | None = None,
    constrained: bool = True,
    infer: str = "user",
    mask_echo: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for :class:`FlipReward` (everything but the backend and the cache)."""
    tmpl: Template | str | None = template
    if user_template is not None:
        tmpl = Template.from_files(user=user_template, system=system_template)
    elif system_template is not None:
        raise typer.BadParameter("--system-template needs --user-template too")
    return {
        "template": tmpl,
        "method": method,
        "parse_failure": parse_failure,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "max_response_chars": max_response_chars,
        "constrained": constrained,
        "infer": infer,
        "mask_echo": mask_echo,
        "max_concurrency": concurrency,
    }


def make_reward(
    *,
    backend: str = "embedded",
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    cache: Path | None = None,
    no_cache: bool = False,
    exact: bool = False,
    **options: Any,
) -> FlipReward:
    """The CLI's FlipReward: ``options`` are :func:`reward_options`' keyword arguments."""
    opts = reward_options(concurrency=concurrency, **options)
    cache_path = None if no_cache else (cache or cache_dir() / "responses.sqlite")
    return FlipReward(
        make_backend(backend, base_url, model, api_key, concurrency, exact),
        cache=cache_path,
        **opts,
    )
