"""fliprm: FLIP reward models. Score a response by inferring the instruction behind it.

>>> from fliprm import f1_score
>>> round(f1_score("Name the capital of France.", "What is the capital of France?").f1, 3)
0.667
"""

from __future__ import annotations

from ._types import Completion, GenerateRequest, Message
from ._version import __version__
from .backends import Backend, get_backend
from .cache import ResponseCache
from .config import RewardConfig, RuntimeOptions
from .engine import Engine
from .errors import (
    BackendError,
    ConfigError,
    FlipError,
    InputError,
    MissingDependency,
    ModelIntegrityError,
)
from .reward import FlipResult, FlipReward, truncate_middle
from .similarity import F1, f1_score, normalize_text
from .templates import Template, get_template

__all__ = [
    "F1",
    "Backend",
    "BackendError",
    "Completion",
    "ConfigError",
    "Engine",
    "FlipError",
    "FlipResult",
    "FlipReward",
    "GenerateRequest",
    "InputError",
    "Message",
    "MissingDependency",
    "ModelIntegrityError",
    "ResponseCache",
    "RewardConfig",
    "RuntimeOptions",
    "Template",
    "__version__",
    "f1_score",
    "get_backend",
    "get_template",
    "normalize_text",
    "truncate_middle",
]
