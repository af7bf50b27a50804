"""Hugging Face ``datasets`` as input to ``score``, ``eval`` and ``rerank``.

An input is a file (JSONL, CSV, parquet), a folder written by ``Dataset.save_to_disk`` /
``DatasetDict.save_to_disk``, or a hub dataset name (``owner/name``, or ``hf:name``). A folder
or a hub dataset is written once to a parquet file under ``<cache dir>/datasets/<fingerprint>/``
and read from there, so resuming, input identity and the readers are the same as for a file.
``datasets`` is imported only for these inputs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["ResolvedInput", "resolve_input"]

HUB_HELP = (
    "cannot load {name} from the Hugging Face hub ({why}).\n"
    "Pass a local copy instead: on a machine with hub access run\n"
    "  python -c \"import datasets; datasets.load_dataset('{name}', split='{split}')"
    ".to_parquet('data.parquet')\"\n"
    "then copy data.parquet here and pass its path (JSONL, CSV or a folder written by "
    "datasets' save_to_disk work too)."
)
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = {".jsonl", ".json", ".ndjson", ".csv", ".parquet", ".pq", ".arrow"}


@dataclass(frozen=True)
class ResolvedInput:
    """A readable file for an input spec, and how to name it (in manifests and reports)."""

    path: Path
    label: str
    #: the spec was a file already (not a dataset folder or a hub name)
    is_file: bool


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("a dataset folder or hub name needs the 'datasets' package: "
                          "pip install 'fliprm[hf]'") from None
    return datasets


def _pick_split(ds: Any, split: str | None, name: str) -> Any:
    if not hasattr(ds, "keys"):  # a Dataset, not a DatasetDict
        if split is not None:
            raise ConfigError(f"{name} holds a single split; leave out --split")
        return ds
    splits = list(ds.keys())
    if split is None:
        if len(splits) != 1:
            raise ConfigError(f"{name} has the splits {', '.join(splits)}: choose one with --split")
        split = splits[0]
    if split not in ds:
        raise ConfigError(f"{name} has no split {split!r} (splits: {', '.join(splits)})")
    return ds[split]


def _materialize(ds: Any, stem: str) -> Path:
    from .model import cache_dir

    fp = getattr(ds, "_fingerprint", None) or "nofp"
    out = cache_dir() / "datasets" / str(fp) / f"{stem}.parquet"
    if not out.is_file():  # written once: the same bytes on every resume, the same identity
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        ds.to_parquet(str(tmp))
        os.replace(tmp, out)
    return out


def _probe_hub(name: str, split: str | None) -> None:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return  # datasets uses its cache, or fails at once
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        # probe first: offline, `datasets` retries for minutes before it gives up
        httpx.head(f"{endpoint}/api/datasets/{name}", timeout=8.0)
    except httpx.HTTPError as exc:
        raise ConfigError(HUB_HELP.format(name=name, split=split or "train", why=f"{endpoint} "
                                          f"is unreachable: {type(exc).__name__}")) from None


def resolve_input(spec: str | Path, *, split: str | None = None,
                  config: str | None = None) -> ResolvedInput:
    """The file to read for ``spec``: itself, a dataset folder's or a hub dataset's parquet copy.

    >>> resolve_input("tests/fixtures/bon_tiny.jsonl").label  # doctest: +SKIP
    'tests/fixtures/bon_tiny.jsonl'
    """
    text = str(spec)
    p = Path(text)
    hub = text.startswith("hf:")
    if not hub and p.is_file():
        if split is not None or config is not None:
            raise ConfigError("--split and --config apply to a dataset folder or hub name, "
                              f"not to the file {p}")
        return ResolvedInput(p, text, True)
    if not hub and p.is_dir():
        datasets = _datasets()
        if config is not None:
            raise ConfigError("--config applies to a hub dataset, not to a folder")
        try:
            ds = datasets.load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"{p} is a folder but not one written by datasets' save_to_disk "
                              f"({exc})") from None
        ds = _pick_split(ds, split, str(p))
        return ResolvedInput(_materialize(ds, p.resolve().name or "data"), str(p), False)
    name = text[3:] if hub else text
    if not hub and (p.suffix.lower() in _FILE_SUFFIXES or not _HUB_NAME.match(name)):
        raise ConfigError(f"input file not found: {p}")
    datasets = _datasets()
    _probe_hub(name, split)
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - any hub/cache failure gets the same advice
        raise ConfigError(HUB_HELP.format(name=name, split=split or "train",
                                          why=f"{type(exc).__name__}: {exc}")) from None
    ds = _pick_split(ds, None, name)  # with --split, load_dataset returned that split
    label = f"hf:{name}" + (f" ({config})" if config else "") + (f" [{split}]" if split else "")
    return ResolvedInput(_materialize(ds, name.replace("/", "__")), label, False)
