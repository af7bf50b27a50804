"""``fliprm doctor``: is the default model here, does its hash match, which runtime and threads."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..model import EMBEDDED_MODELS, cache_dir, model_status


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        load: bool = typer.Option(False, "--load", help="also load the model and time one call"),
    ) -> None:
        """Check the embedded default: model present, sha256 ok, runtime, threads."""
        from ..backends._libllama import prompt_pass_supported
        from ..backends.embedded import _default_threads

        console = Console()
        t = Table(title="fliprm doctor", show_header=False)
        t.add_row("fliprm", __version__)
        t.add_row("python", f"{sys.version.split()[0]} ({platform.machine()})")
        t.add_row("runtime (xllamacpp)", _version("xllamacpp"))
        errors = []
        ok = False
        for i, spec in enumerate(EMBEDDED_MODELS.values()):
            st = model_status(spec)
            label = f"embedded:{spec.name}" + (" (default)" if i == 0 else "")
            if i > 0 and not st.present and st.sha256_ok is None:
                t.add_row(label, f"not installed ({spec.install_hint})")
                continue
            state = {True: "sha256 ok (whole file hashed now)", False: "sha256 MISMATCH",
                     None: "not installed"}[st.sha256_ok]
            t.add_row(label, f"{st.path}: {state}")
            if i == 0:
                ok = bool(st.sha256_ok)
            if st.error:
                errors.append(st.error)
        t.add_row("CPU threads", str(_default_threads()))
        t.add_row("likelihood, pmi", "one forward pass (llama.cpp library)" if
                  prompt_pass_supported() else "forced steps (this llama.cpp library's "
                  "parameters are not recognised)")
        t.add_row("cache dir", str(cache_dir()))
        if load and ok:
            import time

            from ..reward import FlipReward

            rm = FlipReward(max_tokens=64)
            t0 = time.perf_counter()
            res = rm.score(["Say hello."], ["Hello!"])[0]
            t.add_row("model load", f"{rm.backend.load_s:.1f} s")  # type: ignore[attr-defined]
            t.add_row("one short call", f"{time.perf_counter() - t0:.1f} s, reward {res.reward}")
            ok = res.error is None
            rm.close()
        console.print(t)
        for e in errors:
            console.print(f"[red]{e}[/red]")
        raise typer.Exit(0 if ok else 1)
