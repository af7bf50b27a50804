"""Prompt templates: a system and a user message in Python ``str.format`` style.

Built-in templates live beside this file as ``<name>.system.txt`` / ``<name>.user.txt``. A user
can load template files written for the FLIP reference code unchanged (``{response}``,
``{context}``, ``{{``/``}}`` for literal braces) with :meth:`Template.from_files`.

User text is substituted as a *value*: ``str.format`` never re-reads what it inserts, so a
response containing ``{response}`` or ``{{`` reaches the model verbatim, and every inserted
value is passed through :func:`fliprm.neutralize.neutralize` first, so text that a tokenizer
would read as a control token (``<|im_end|>``) or that would close the template's own
``<response>`` block is defused visibly. Only plain field names
are allowed in a template (no ``{x.attr}`` or ``{x[0]}``), so a template cannot reach into objects.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .._types import Message
from ..errors import ConfigError
from ..neutralize import neutralize

__all__ = ["BUILTIN_TEMPLATES", "Template", "get_template"]

BUILTIN_TEMPLATES = (
    "flip",
    "flip-contextual",
    "flip-short",
    "flip-short-contextual",
    "pointwise",
    "pairwise",
    "listwise",
)

# Aliases so reference template files render: the contextual reference prompt calls the
# answer {output}.
_ALIASES = {"output": "response"}


def _fields(text: str, where: str) -> frozenset[str]:
    names = set()
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid str.format template: {exc}") from None
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ConfigError(
                f"{where}: placeholder {{{name}}} is not a plain name; "
                "use {response}, {context}, ... and {{ }} for literal braces"
            )
        if spec or conv:
            raise ConfigError(f"{where}: placeholder {{{name}}} may not carry a format spec")
        names.add(name)
    return frozenset(names)


@dataclass(frozen=True)
class Template:
    """A system + user prompt pair.

    >>> t = Template(name="demo", system="Be brief.", user="[Response]\\n{response}")
    >>> t.render(response="{response} stays {{as is}}")[1]["content"]
    '[Response]\\n{response} stays {{as is}}'
    """

    name: str
    system: str
    user: str

    def __post_init__(self) -> None:
        _fields(self.system, f"template {self.name!r} (system)")
        _fields(self.user, f"template {self.name!r} (user)")

    @property
    def fields(self) -> frozenset[str]:
        return _fields(self.system, self.name) | _fields(self.user, self.name)

    @property
    def sha256(self) -> str:
        """Content hash; part of cache keys and recorded in results."""
        h = hashlib.sha256()
        h.update(self.system.encode())
        h.update(b"\0")
        h.update(self.user.encode())
        return h.hexdigest()

    def render(self, **values: str) -> tuple[Message, ...]:
        """Fill the placeholders; every placeholder the template uses must be given."""
        values = {k: neutralize(v)[0] for k, v in values.items()}
        for alias, target in _ALIASES.items():
            if target in values and alias not in values:
                values[alias] = values[target]
        missing = self.fields - values.keys()
        if missing:
            raise ConfigError(
                f"template {self.name!r} needs {', '.join(sorted(missing))}; "
                f"got {', '.join(sorted(values))}"
            )
        msgs: list[Message] = []
        if self.system.strip():
            msgs.append({"role": "system", "content": self.system.format_map(values)})
        msgs.append({"role": "user", "content": self.user.format_map(values)})
        return tuple(msgs)

    @classmethod
    def from_files(
        cls, *, user: str | Path, system: str | Path | None = None, name: str | None = None
    ) -> Template:
        """Load a template from files, e.g. the reference's ``FLIP_SYSTEM.prompt``/``FLIP_USER.prompt``."""
        try:
            user_text = Path(user).read_text(encoding="utf-8")
            system_text = Path(system).read_text(encoding="utf-8") if system else ""
        except OSError as exc:
            raise ConfigError(f"cannot read template file: {exc}") from None
        return cls(name=name or Path(user).stem, system=system_text, user=user_text)


def get_template(name: str | Template) -> Template:
    """A built-in template by name (see :data:`BUILTIN_TEMPLATES`), or a Template as is."""
    if isinstance(name, Template):
        return name
    if name not in BUILTIN_TEMPLATES:
        raise ConfigError(
            f"unknown template {name!r}; built-in: {', '.join(BUILTIN_TEMPLATES)} "
            "(or load files with Template.from_files)"
        )
    root = resources.files(__package__)
    return Template(
        name=name,
        system=(root / f"{name}.system.txt").read_text(encoding="utf-8"),
        user=(root / f"{name}.user.txt").read_text(encoding="utf-8"),
    )
