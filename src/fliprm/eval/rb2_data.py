"""Loading RewardBench 2 items: from the Hugging Face hub, or from a local parquet/JSONL copy.

The schema is RB2's: ``id``, ``prompt``, ``chosen`` (list), ``rejected`` (list), ``subset``
(plus ``num_correct``, ``models``, ... which are kept but not needed). Files in the same shape
with a string ``chosen`` (fliprm's AlpacaEval-derived sets) are accepted; a file without a
``subset`` column is one subset named after the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..inputs import require_text
from ..records import read_records

__all__ = ["DEFAULT_SUBSETS", "HUB_DATASET", "RB2Item", "load_items", "normalize"]

HUB_DATASET = "allenai/reward-bench-2"
#: the four subsets of the FLIP paper (Safety needs refusal judgement; Ties its own formula)
DEFAULT_SUBSETS = ("Focus", "Factuality", "Precise IF", "Math")

HUB_HELP = (
    "cannot load {name} from the Hugging Face hub ({why}).\n"
    "Pass a local copy instead: on a machine with hub access run\n"
    "  python -c \"import datasets; datasets.load_dataset('{name}', split='test')"
    ".to_parquet('rb2.parquet')\"\n"
    "then copy rb2.parquet here and use  --data rb2.parquet  (JSONL in the same schema works too)."
)


@dataclass
class RB2Item:
    """One prompt with its correct (``chosen``) and incorrect (``rejected``) answers."""

    id: str
    prompt: str
    chosen: list[str]
    rejected: list[str]
    subset: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def candidates(self) -> list[str]:
        """Chosen first, as in RB2: indices ``0..num_correct-1`` are the correct ones."""
        return self.chosen + self.rejected

    @property
    def num_correct(self) -> int:
        return len(self.chosen)


def _as_list(value: Any, name: str, where: str) -> list[str]:
    # An empty answer is a legitimate (bad) answer and stays; a null or a number is bad data.
    if isinstance(value, str):
        return [require_text(value, name, where, allow_empty=True)]
    if isinstance(value, (list, tuple)) and value:
        return [require_text(v, f"{name}[{j}]", where, allow_empty=True) for j, v in enumerate(value)]
    raise InputError(f"{where}: {name!r} must be a string or a non-empty list of strings")


def _prompt_text(prompt: Any, where: str) -> str:
    # Every judge would rank answers to a blank prompt at random: refuse it up front.
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        # chat messages: the last turn is the ask
        return require_text(prompt[-1].get("content"), "prompt[-1].content", where)
    if not isinstance(prompt, str):
        raise InputError(f"{where}: 'prompt' must be a string or a list of chat messages")
    return require_text(prompt, "prompt", where)


def normalize(row: dict[str, Any], default_subset: str, where: str) -> RB2Item:
    """One raw row -> :class:`RB2Item` (raises :class:`InputError` naming the row)."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            raise InputError(f"{where}: missing field {key!r}")
    known = {"id", "prompt", "chosen", "rejected", "subset"}
    raw_id = row.get("id")
    return RB2Item(
        id=str(raw_id) if raw_id not in (None, "") else where,
        prompt=_prompt_text(row["prompt"], where),
        chosen=_as_list(row["chosen"], "chosen", where),
        rejected=_as_list(row["rejected"], "rejected", where),
        subset=str(row.get("subset") or default_subset),
        extra={k: v for k, v in row.items() if k not in known},
    )


def _from_hub() -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(HUB_HELP.format(name=HUB_DATASET, why="the 'datasets' package is not "
                                          "installed: pip install datasets")) from None
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        # Probe first: offline, `datasets` retries for minutes before it gives up.
        import httpx

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        try:
            httpx.head(f"{endpoint}/api/datasets/{HUB_DATASET}", timeout=8.0)
        except httpx.HTTPError as exc:
            raise ConfigError(HUB_HELP.format(name=HUB_DATASET, why=f"{endpoint} is "
                                              f"unreachable: {type(exc).__name__}")) from None
    try:
        ds = datasets.load_dataset(HUB_DATASET, split="test")
    except Exception as exc:  # noqa: BLE001 - any hub/cache failure gets the same advice
        raise ConfigError(HUB_HELP.format(name=HUB_DATASET, why=f"{type(exc).__name__}: {exc}")) from None
    return [dict(r) for r in ds]


def load_items(
    data: str | Path | None = None,
    *,
    subsets: Sequence[str] | None = DEFAULT_SUBSETS,
    limit: int | None = None,
) -> list[RB2Item]:
    """Items of the wanted subsets, in file order; ``limit`` keeps the first N of each subset.

    ``subsets=None`` keeps everything. A file without a ``subset`` column is one subset named
    after the file and is never filtered out.

    >>> load_items("tests/fixtures/rb2_tiny.jsonl", subsets=["Focus"], limit=1)[0].subset  # doctest: +SKIP
    'Focus'
    """
    if data is None:
        rows: list[tuple[str, dict[str, Any]]] = [(f"row {i}", r) for i, r in enumerate(_from_hub())]
        default_subset = "unknown"
    else:
        rows = []
        for n, rec in read_records(data):
            if isinstance(rec, InputError):
                raise InputError(f"{data}: {rec}")
            rows.append((f"{data}: row {n}", rec))
        default_subset = Path(data).stem
    has_subset = any("subset" in r for _, r in rows)
    wanted = set(subsets) if subsets is not None and has_subset else None
    items: list[RB2Item] = []
    per_subset: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    for where, row in rows:
        item = normalize(row, default_subset, where)
        # records are keyed by item id: a duplicate would be skipped on resume and merged in
        # the report, so it is refused before any work
        if item.id in first_seen:
            raise InputError(f"{where}: duplicate id {item.id!r} (first at {first_seen[item.id]})")
        first_seen[item.id] = where
        if wanted is not None and item.subset not in wanted:
            continue
        if limit is not None and per_subset.get(item.subset, 0) >= limit:
            continue
        per_subset[item.subset] = per_subset.get(item.subset, 0) + 1
        items.append(item)
    if not items:
        raise InputError(f"no items left after filtering subsets={list(subsets or [])}")
    return items
