"""Settings from ``FLIPRM_*`` environment variables, read by pydantic-settings.

Each env model has one field per field of a config object (:class:`~fliprm.config.RewardConfig`,
:class:`~fliprm.config.RuntimeOptions`, :class:`~fliprm.config.ServerOptions`, the adapters'
options), so ``FLIPRM_<FIELD>`` follows from the field as its ``--flag`` does. The values stay
raw text here: the config object itself validates them (one set of rules for flags, keywords
and env), and :func:`fliprm.config.name_env_vars` turns its error into one line naming the
variable. An empty variable counts as unset.

The secrets are one variable each (:class:`KeysEnv`): ``FLIPRM_BACKEND_API_KEY`` (sent to an
OpenAI-compatible judge) and ``FLIPRM_SERVER_API_KEY`` (the key of a ``fliprm serve``: the
server requires it, adapters and clients send it). The old ``FLIPRM_API_KEY``, which meant
either, still works for one release with a :class:`DeprecationWarning`; a new one set wins.

>>> import os; os.environ["FLIPRM_MAX_TOKENS"] = "64"
>>> RewardEnv().given()
{'max_tokens': '64'}
>>> del os.environ["FLIPRM_MAX_TOKENS"]
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

from .config import ENV_PREFIX, RewardConfig, RuntimeOptions, ServerOptions

__all__ = ["EnvSource", "KeysEnv", "RewardEnv", "RuntimeEnv", "ServerEnv", "env_model"]

#: the deprecated variable that meant the backend's key, the server's or the client's
OLD_API_KEY = ENV_PREFIX + "API_KEY"
BACKEND_API_KEY = ENV_PREFIX + "BACKEND_API_KEY"
SERVER_API_KEY = ENV_PREFIX + "SERVER_API_KEY"


class EnvSource(BaseSettings):
    """Base of the env models: prefix ``FLIPRM_``, empty means unset, read when constructed."""

    # extra="ignore": pydantic-settings reads only the declared names; frozen: a snapshot
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
                                      extra="ignore", frozen=True)

    def given(self) -> dict[str, Any]:
        """The variables that are set, by field name (raw text)."""
        return self.model_dump(exclude_none=True)


def env_model(name: str, *models: type[BaseModel], exclude: Iterable[str] = (),
              extra: Iterable[str] = ()) -> type[EnvSource]:
    """An env model with a raw-text ``FLIPRM_<FIELD>`` for every field of ``models``.

    >>> env_model("E", RuntimeOptions, exclude={"api_key"}).model_fields["timeout"].annotation
    str | None
    """
    skip = set(exclude)
    names = [n for m in models for n in m.model_fields if n not in skip] + list(extra)
    fields: dict[str, Any] = {n: (str | None, None) for n in names}
    return create_model(name, __base__=EnvSource, **fields)


#: the reward settings, plus ``FLIPRM_PRESET`` (the starting point)
RewardEnv = env_model("RewardEnv", RewardConfig, extra=("preset",))
#: runtime settings; the backend's key is a secret of :class:`KeysEnv`
RuntimeEnv = env_model("RuntimeEnv", RuntimeOptions, exclude={"api_key"})
#: ``fliprm serve``'s options; its key is a secret of :class:`KeysEnv`
ServerEnv = env_model("ServerEnv", ServerOptions, exclude={"api_key"})


class KeysEnv(EnvSource):
    """The secrets, one variable each; ``FLIPRM_API_KEY`` is the deprecated fallback of both.

    >>> KeysEnv(backend_api_key="b").backend()
    'b'
    """

    #: ``FLIPRM_BACKEND_API_KEY``: bearer token sent to the OpenAI-compatible judge
    backend_api_key: str | None = None
    #: ``FLIPRM_SERVER_API_KEY``: a ``fliprm serve``'s key (it requires it, clients send it)
    server_api_key: str | None = None
    #: ``FLIPRM_API_KEY``: deprecated, meant one of the two above depending on the command
    api_key: str | None = None

    def backend(self) -> str | None:
        """The judge backend's key: ``FLIPRM_BACKEND_API_KEY``, else the deprecated name."""
        return self.backend_api_key or self.deprecated(BACKEND_API_KEY)

    def server(self) -> str | None:
        """The fliprm server's key: ``FLIPRM_SERVER_API_KEY``, else the deprecated name."""
        return self.server_api_key or self.deprecated(SERVER_API_KEY)

    def deprecated(self, *new: str) -> str | None:
        """``FLIPRM_API_KEY`` if set, with a one-line :class:`DeprecationWarning` naming ``new``."""
        if self.api_key is None:
            return None
        warnings.warn(f"{OLD_API_KEY} is deprecated (it is removed in the next release): set "
                      f"{' or '.join(new)} instead", DeprecationWarning, stacklevel=3)
        return self.api_key
