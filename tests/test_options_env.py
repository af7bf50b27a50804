"""Option objects and env settings (issue 22, part 3): RayOptions behind the ``--ray`` flags,
``FLIPRM_*`` read by pydantic-settings, and one variable per secret with the old
``FLIPRM_API_KEY`` deprecated (it still works, warns, and a new variable set wins)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from fliprm.config import RayOptions
from fliprm.errors import ConfigError

KEY_VARS = ("FLIPRM_API_KEY", "FLIPRM_BACKEND_API_KEY", "FLIPRM_SERVER_API_KEY",
            "OPENAI_API_KEY", "FLIPRM_SERVER_URL")


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)


def _deprecations(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record
            if issubclass(w.category, DeprecationWarning) and "FLIPRM_API_KEY" in str(w.message)]


# ---- RayOptions ----------------------------------------------------------------------------


def test_ray_flags_keep_their_names_and_defaults() -> None:
    import typer.main

    from helpers_fliprm import score_app

    cmd = typer.main.get_command(score_app()).commands["score"]  # type: ignore[attr-defined]
    opts = {o: p for p in cmd.params for o in getattr(p, "opts", [])}
    for flag in ("--ray-address", "--actors", "--cpus-per-actor", "--batch-size", "--shard-size"):
        assert flag in opts and opts[flag].default is None, flag  # unset unless given
    assert opts["--ray"].is_flag and opts["--ray"].default is False
    assert "--no-ray" not in opts
    # what an unset flag means: the defaults `fliprm score --ray` always had
    d = RayOptions()
    assert (d.address, d.actors, d.cpus_per_actor, d.batch_size, d.shard_size) == (
        None, None, 1.0, 16, 1000)


def _pairs(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "instruction": f"Say {i}.",
                                        "response": f"{i}."}) + "\n" for i in range(5)),
                    encoding="utf-8")
    return path


def _run_ray_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> dict:
    """``fliprm score IN -o OUT --ray ARGS`` down to scale._ray._run (no Ray started)."""
    from typer.testing import CliRunner

    import fliprm.scale._ray as ray_mod
    from fliprm.scale import RaySummary
    from helpers_fliprm import score_app

    seen: dict[str, Any] = {}

    def fake_run(ray, plan, fingerprint, out, config, runtime, base_urls, opts, *rest):
        seen.update(opts=opts, shard_size=plan.shard_size)
        return RaySummary(shards_total=len(plan.shards))

    monkeypatch.setattr(ray_mod, "_import_ray", lambda: object())
    monkeypatch.setattr(ray_mod, "_run", fake_run)
    res = CliRunner().invoke(score_app(), ["score", str(_pairs(tmp_path)), "-o",
                                            str(tmp_path / "out"), "--ray", "-b", "fake", *args])
    assert res.exit_code == 0, res.output
    return seen


def test_ray_flags_reach_the_ray_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _run_ray_cli(tmp_path, monkeypatch, [
        "--ray-address", "auto", "--actors", "3", "--cpus-per-actor", "0.5",
        "--batch-size", "8", "--shard-size", "2"])
    assert seen["opts"] == RayOptions(address="auto", actors=3, cpus_per_actor=0.5,
                                      batch_size=8, shard_size=2)
    assert seen["shard_size"] == 2  # the plan is cut by the option too


def test_unset_ray_flags_reach_the_runner_as_the_defaults(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    opts = _run_ray_cli(tmp_path, monkeypatch, [])["opts"]
    assert (opts.address, opts.actors, opts.cpus_per_actor, opts.batch_size, opts.shard_size) == (
        None, None, 1.0, 16, 1000)


def test_score_file_ray_keywords_override_its_options(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import fliprm.scale._ray as ray_mod
    from fliprm.config import RewardConfig
    from fliprm.scale import RaySummary, score_file_ray

    seen: dict[str, Any] = {}
    monkeypatch.setattr(ray_mod, "_import_ray", lambda: object())
    monkeypatch.setattr(ray_mod, "_run", lambda *a: seen.update(opts=a[7]) or RaySummary())
    score_file_ray(_pairs(tmp_path), tmp_path / "out", config=RewardConfig(backend="fake"),
                   ray_options=RayOptions(actors=2, batch_size=4), num_actors=5, progress=False)
    assert seen["opts"] == RayOptions(actors=5, batch_size=4)


def test_a_bad_ray_option_is_one_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as exc:
        RayOptions(shard_size=0)
    assert str(exc.value) == "shard_size: must be positive"


# ---- the adapters' env: one variable per secret --------------------------------------------


def test_adapter_keys_each_have_their_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from fliprm.integrations._common import FlipSettings

    monkeypatch.setenv("FLIPRM_BACKEND_API_KEY", "b")
    monkeypatch.setenv("FLIPRM_SERVER_API_KEY", "s")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = FlipSettings.from_env()
        served = FlipSettings.from_env(server_url="http://h:1")
    assert (s.runtime.api_key, s.adapter.server_api_key) == ("b", "s")
    assert (served.runtime.api_key, served.adapter.server_api_key) == ("b", "s")
    assert _deprecations(rec) == []


@pytest.mark.parametrize(("server_url", "field", "new_var"), [
    (None, "runtime", "FLIPRM_BACKEND_API_KEY"),
    ("http://h:1", "adapter", "FLIPRM_SERVER_API_KEY"),
])
def test_old_api_key_still_works_with_a_one_line_warning_naming_the_new_variable(
    monkeypatch: pytest.MonkeyPatch, server_url: str | None, field: str, new_var: str,
) -> None:
    from fliprm.integrations._common import FlipSettings

    monkeypatch.setenv("FLIPRM_API_KEY", "old")
    with pytest.warns(DeprecationWarning) as rec:
        s = FlipSettings.from_env(server_url=server_url)
    key = s.runtime.api_key if field == "runtime" else s.adapter.server_api_key
    assert key == "old"
    (msg,) = _deprecations(rec.list)
    assert new_var in msg and "\n" not in msg


@pytest.mark.parametrize("new_var", ["FLIPRM_BACKEND_API_KEY", "FLIPRM_SERVER_API_KEY"])
def test_a_new_key_variable_wins_over_the_old_one_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, new_var: str,
) -> None:
    from fliprm.integrations._common import FlipSettings

    monkeypatch.setenv("FLIPRM_API_KEY", "old")
    monkeypatch.setenv(new_var, "new")
    server = "http://h:1" if new_var == "FLIPRM_SERVER_API_KEY" else None
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = FlipSettings.from_env(server_url=server)
    key = s.adapter.server_api_key if server else s.runtime.api_key
    assert key == "new"
    assert _deprecations(rec) == []


@pytest.mark.parametrize(("var", "value", "message"), [
    ("FLIPRM_MAX_TOKENS", "lots", "FLIPRM_MAX_TOKENS='lots': Input should be a valid integer"),
    ("FLIPRM_SERVER_TIMEOUT", "soon", "FLIPRM_SERVER_TIMEOUT='soon': Input should be a valid"),
    ("FLIPRM_TIMEOUT", "-1", "FLIPRM_TIMEOUT='-1': must be > 0"),
])
def test_a_bad_adapter_env_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str,
) -> None:
    from fliprm.integrations._common import FlipSettings

    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        FlipSettings.from_env()
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_an_empty_variable_is_unset_and_a_set_one_is_read_at_call_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fliprm.integrations._common import FlipSettings

    monkeypatch.setenv("FLIPRM_METHOD", "")
    assert FlipSettings.from_env().config.method == "pmi"
    monkeypatch.setenv("FLIPRM_METHOD", "f1")
    monkeypatch.setenv("FLIPRM_FAILURE_SCORE", "-2")
    s = FlipSettings.from_env()
    assert (s.config.method, s.adapter.failure_score) == ("f1", -2.0)


def test_settings_parts_are_read_by_name_not_merged() -> None:
    from fliprm.integrations._common import FlipSettings

    s = FlipSettings.from_env(max_tokens=64)
    assert s.config.max_tokens == 64
    with pytest.raises(AttributeError):
        s.max_tokens  # noqa: B018  (the flat __getattr__ view is gone)


# ---- the openai backend's key --------------------------------------------------------------


def test_openai_backend_key_new_variable_wins_old_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from fliprm.backends.openai import OpenAIBackend

    monkeypatch.setenv("OPENAI_API_KEY", "openai")
    assert OpenAIBackend(base_url="http://127.0.0.1:9/v1").api_key == "openai"
    monkeypatch.setenv("FLIPRM_API_KEY", "old")
    with pytest.warns(DeprecationWarning, match="FLIPRM_BACKEND_API_KEY"):
        assert OpenAIBackend(base_url="http://127.0.0.1:9/v1").api_key == "old"
    monkeypatch.setenv("FLIPRM_BACKEND_API_KEY", "new")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert OpenAIBackend(base_url="http://127.0.0.1:9/v1").api_key == "new"
    assert _deprecations(rec) == []
    # the server's key is never sent to a backend
    monkeypatch.delenv("FLIPRM_BACKEND_API_KEY")
    monkeypatch.delenv("FLIPRM_API_KEY")
    monkeypatch.setenv("FLIPRM_SERVER_API_KEY", "server")
    assert OpenAIBackend(base_url="http://127.0.0.1:9/v1").api_key == "openai"


# ---- fliprm serve's key --------------------------------------------------------------------


def _serve(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
           args: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any], list[str]]:
    """``fliprm serve -b fake ARGS`` under ``env``, stopped before uvicorn runs."""
    import uvicorn
    from typer.testing import CliRunner

    import fliprm.server
    from fliprm.cli.main import _register, app

    seen: dict[str, Any] = {}

    def create_app(reward: Any, options: Any = None, **kw: Any) -> Any:
        seen.update(options=options, reward=reward)
        return object()

    monkeypatch.setattr(fliprm.server, "create_app", create_app)
    monkeypatch.setattr(fliprm.server, "serve_config", lambda app, opts: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: None)
    monkeypatch.setattr(fliprm.server, "GuardedServer", lambda config: type(
        "S", (), {"run": lambda self: None})())
    _register()
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLIPRM_")}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = CliRunner().invoke(app, ["serve", "-b", "fake", "--no-cache", *args],
                                 env={**base, **env})
    return res, seen, _deprecations(rec)


def test_serve_key_from_its_own_variable_never_the_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    res, seen, warned = _serve(monkeypatch, {"FLIPRM_SERVER_API_KEY": "s",
                                             "FLIPRM_BACKEND_API_KEY": "b"})
    assert res.exit_code == 0, res.output
    assert seen["options"].api_key == "s" and seen["reward"].runtime.api_key == "b"
    assert warned == []


def test_serve_old_key_still_works_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    res, seen, warned = _serve(monkeypatch, {"FLIPRM_API_KEY": "old"})
    assert res.exit_code == 0, res.output
    assert seen["options"].api_key == "old"
    assert seen["reward"].runtime.api_key is None  # the server's key is not the backend's
    assert len(warned) == 1 and "FLIPRM_SERVER_API_KEY" in warned[0]


def test_serve_new_key_wins_and_the_flag_wins_over_both(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"FLIPRM_API_KEY": "old", "FLIPRM_SERVER_API_KEY": "new"}
    res, seen, warned = _serve(monkeypatch, env)
    assert res.exit_code == 0 and seen["options"].api_key == "new" and warned == []
    res, seen, warned = _serve(monkeypatch, env, ("--api-key", "flag"))
    assert res.exit_code == 0 and seen["options"].api_key == "flag" and warned == []


def test_serve_on_a_public_host_without_a_key_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    res, seen, _ = _serve(monkeypatch, {}, ("--host", "0.0.0.0"))
    assert res.exit_code == 2 and "options" not in seen
    assert "FLIPRM_SERVER_API_KEY" in " ".join(res.output.split())


def test_a_bad_server_env_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    res, seen, _ = _serve(monkeypatch, {"FLIPRM_PORT": "99999"})
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert res.exit_code == 2 and "options" not in seen
    assert len(lines) == 1 and "FLIPRM_PORT='99999': must be between 0 and 65535" in lines[0]


def test_the_cli_shows_the_deprecation_as_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLIPRM_", "OPENAI_"))}
    env.update(FLIPRM_API_KEY="old", FLIPRM_CACHE_DIR=str(tmp_path), COLUMNS="1000")
    proc = subprocess.run(
        [sys.executable, "-m", "fliprm.cli.main", "score", "-i", "a", "-r", "b", "-b", "openai:m",
         "--base-url", "http://127.0.0.1:9/v1", "--no-cache", "--max-retries", "0"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    warned = [x for x in proc.stderr.splitlines() if "FLIPRM_API_KEY" in x]
    want = ("warning: FLIPRM_API_KEY is deprecated (it is removed in the next release): set "
            "FLIPRM_BACKEND_API_KEY instead")
    assert warned == [want], proc.stderr
