"""Prompt log-probabilities from llama.cpp's own library, in one forward pass.

llama.cpp's server returns no log-probabilities for prompt tokens, so over HTTP a forced text is
*decoded*, one step per token (:mod:`._forcing`). A decode step costs several times what one
token of a prompt batch does (one core, 0.5B model: 80 ms per step alone, 13.5 ms per prompt
token), so on the embedded model, where the library is in this
process anyway, the instruction is instead evaluated as part of the prompt, with the model's
output kept at each of its positions: the log-probability of every instruction token comes out
of one ``llama_decode`` call, the response before it from a cached prefix when the previous
call had the same one (bench/likelihood_cost.py: 2.6-2.7x faster than the steps on the same
items, mean log-probability per token a median 0.004 nats apart: float rounding of the
different batch shapes).

The C API is reached with :mod:`ctypes` on the library xllamacpp ships (it exports
``llama.h``). Parameter structs are opaque buffers: only the leading counts of
``llama_context_params`` are written, at offsets checked against the library's own defaults
(:func:`context_layout`); a library whose defaults do not match is not used (the caller falls
back to forced decoding).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendError, ContextOverflow, MissingDependency

__all__ = ["PromptScorer", "context_layout", "library_path", "prompt_pass_supported"]

#: ggml's GGML_DEFAULT_N_THREADS: the default thread counts mark where they sit in the struct
_DEFAULT_THREADS = 4
#: the first four fields of llama_context_params by default: n_ctx, n_batch, n_ubatch, n_seq_max
_LEADING = (512, 2048, 512, 1)
#: bytes set aside for a parameter struct (the real ones are a few hundred at most; a larger
#: buffer is harmless: by value it is copied and read from its start, on return written there)
_PARAM_BYTES = 1024
#: tokens per llama_decode call (llama.cpp's n_batch and n_ubatch)
_BATCH = 512


class _Params(ctypes.Structure):
    _fields_ = [("raw", ctypes.c_uint8 * _PARAM_BYTES)]


class _Batch(ctypes.Structure):
    # llama.h's llama_batch (unchanged since 2023)
    _fields_ = [("n_tokens", ctypes.c_int32), ("token", ctypes.POINTER(ctypes.c_int32)),
                ("embd", ctypes.c_void_p), ("pos", ctypes.POINTER(ctypes.c_int32)),
                ("n_seq_id", ctypes.POINTER(ctypes.c_int32)),
                ("seq_id", ctypes.POINTER(ctypes.POINTER(ctypes.c_int32))),
                ("logits", ctypes.POINTER(ctypes.c_int8))]


@dataclass(frozen=True)
class ContextLayout:
    """Where ``n_threads`` sits in ``llama_context_params`` (in 32-bit words)."""

    n_threads: int


def context_layout(words: Sequence[int]) -> ContextLayout | None:
    """The layout of ``llama_context_params`` read from its defaults as 32-bit words, or None
    when they do not look like llama.cpp's (then this module is not used).

    >>> context_layout([512, 2048, 512, 1, 4, 4, 0])
    ContextLayout(n_threads=4)
    >>> context_layout([512, 2048, 512, 1, 0, 0, 1, 4, 4, 0])
    ContextLayout(n_threads=7)
    >>> context_layout([512, 2048, 512, 1, 0, 0, 0, 0, 0, 0, 0, 0]) is None
    True
    """
    if tuple(words[:4]) != _LEADING:
        return None
    for i in range(4, min(len(words) - 1, 12)):
        if words[i] == words[i + 1] == _DEFAULT_THREADS:
            return ContextLayout(n_threads=i)
    return None


def library_path() -> Path:
    """The llama.cpp library xllamacpp ships (its extension module exports the C API)."""
    try:
        import xllamacpp
    except ImportError:
        raise MissingDependency(
            "the embedded backend needs the llama.cpp runtime: pip install 'fliprm[embedded]'"
        ) from None
    found = sorted(Path(xllamacpp.__file__).parent.glob("xllamacpp*.so"))
    if not found:
        raise MissingDependency(f"no llama.cpp library in {Path(xllamacpp.__file__).parent}")
    return found[0]


_lib_lock = threading.Lock()
_lib: Any = None
_layout: ContextLayout | None = None


def _library() -> tuple[Any, ContextLayout | None]:
    """The library with the signatures this module calls, and its context layout (once)."""
    global _lib, _layout
    with _lib_lock:
        if _lib is not None:
            return _lib, _layout
        lib = ctypes.CDLL(str(library_path()))
        c = ctypes
        sigs: dict[str, tuple[Any, list[Any]]] = {
            "llama_backend_init": (None, []),
            "llama_model_default_params": (_Params, []),
            "llama_context_default_params": (_Params, []),
            "llama_model_load_from_file": (c.c_void_p, [c.c_char_p, _Params]),
            "llama_model_free": (None, [c.c_void_p]),
            "llama_init_from_model": (c.c_void_p, [c.c_void_p, _Params]),
            "llama_free": (None, [c.c_void_p]),
            "llama_n_ctx": (c.c_uint32, [c.c_void_p]),
            "llama_model_get_vocab": (c.c_void_p, [c.c_void_p]),
            "llama_vocab_n_tokens": (c.c_int32, [c.c_void_p]),
            "llama_get_memory": (c.c_void_p, [c.c_void_p]),
            "llama_memory_seq_rm": (c.c_bool, [c.c_void_p, c.c_int32, c.c_int32, c.c_int32]),
            "llama_decode": (c.c_int32, [c.c_void_p, _Batch]),
            "llama_get_logits_ith": (c.POINTER(c.c_float), [c.c_void_p, c.c_int32]),
        }
        try:
            for name, (res, args) in sigs.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = res, args
        except AttributeError:
            _lib, _layout = lib, None  # an older library: no prompt pass
            return _lib, _layout
        lib.llama_backend_init()
        defaults = lib.llama_context_default_params()
        words = list((ctypes.c_uint32 * 16).from_buffer_copy(bytes(defaults.raw[:64])))
        _lib, _layout = lib, context_layout(words)
        return _lib, _layout


def prompt_pass_supported() -> bool:
    """Whether the installed llama.cpp library can give prompt log-probabilities here."""
    try:
        return _library()[1] is not None
    except (MissingDependency, OSError):
        return False


class PromptScorer:
    """Log-probabilities of a token sequence's tail given its head, in one forward pass.

    Holds its own llama.cpp context (``n_seqs`` cached sequences of ``n_ctx`` tokens each; the
    weights are memory-mapped, so the pages are shared with the server's copy). A call reuses
    the cached sequence with the longest common prefix (``reuse=True``), else the least
    recently used one, and evaluates only what differs. Calls are serialised: one pass uses
    every thread it is given.

    >>> scorer = PromptScorer("model.gguf", n_ctx=8192, n_threads=1)  # doctest: +SKIP
    >>> scorer.logprobs([1, 2, 3, 4], start=2)  # doctest: +SKIP
    ([-2.1, -0.4], 0)
    """

    def __init__(self, model_path: str | Path, *, n_ctx: int, n_threads: int,
                 n_seqs: int = 4) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_seqs = max(1, n_seqs)
        self._lock = threading.Lock()
        self._model: int | None = None
        self._ctx: int | None = None
        self._mem: int | None = None
        self._n_vocab = 0
        #: the tokens each sequence's KV cache holds, and when it was last used
        self._held: list[list[int]] = [[] for _ in range(self.n_seqs)]
        self._used = [0] * self.n_seqs
        self._clock = 0

    def _open(self) -> Any:
        lib, layout = _library()
        if layout is None:
            raise BackendError("this llama.cpp library offers no prompt log-probabilities")
        if self._ctx is not None:
            return lib
        model = lib.llama_model_load_from_file(str(self.model_path).encode(),
                                               lib.llama_model_default_params())
        if not model:
            raise BackendError(f"llama.cpp could not load {self.model_path}")
        params = lib.llama_context_default_params()
        words = (ctypes.c_uint32 * (_PARAM_BYTES // 4)).from_buffer(params.raw)
        # non-unified KV cache: each sequence gets n_ctx / n_seq_max positions
        words[0], words[1], words[2], words[3] = (self.n_ctx * self.n_seqs, _BATCH, _BATCH,
                                                  self.n_seqs)
        words[layout.n_threads] = words[layout.n_threads + 1] = self.n_threads
        ctx = lib.llama_init_from_model(model, params)
        if not ctx:
            lib.llama_model_free(model)
            raise BackendError("llama.cpp could not create a scoring context")
        self._model, self._ctx = model, ctx
        self._mem = lib.llama_get_memory(ctx)
        self._n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
        return lib

    def logprobs(self, ids: Sequence[int], start: int, *,
                 reuse: bool = True) -> tuple[list[float], int]:
        """``log p(ids[k] | ids[:k])`` for ``k`` in ``start .. len(ids) - 1``, and how many
        leading tokens came from the cache. ``reuse=False`` evaluates the whole sequence from
        scratch in one sequence slot (the same bits whatever ran before)."""
        import numpy as np

        ids = [int(t) for t in ids]
        if not 1 <= start < len(ids):
            raise ValueError(f"start must be in 1..{len(ids) - 1}, not {start}")
        if len(ids) > self.n_ctx:
            raise ContextOverflow(len(ids), self.n_ctx)
        with self._lock:
            lib = self._open()
            seq, keep = self._choose(ids, start, reuse)
            if keep and not lib.llama_memory_seq_rm(self._mem, seq, keep, -1):
                keep = 0
            if not keep:
                lib.llama_memory_seq_rm(self._mem, seq, 0, -1)
            self._held[seq] = []
            out: list[float] = []
            for lo in range(keep, len(ids), _BATCH):
                chunk = ids[lo:lo + _BATCH]
                want = [start - 1 <= lo + j < len(ids) - 1 for j in range(len(chunk))]
                rc = lib.llama_decode(self._ctx, _batch(chunk, lo, seq, want))
                if rc != 0:
                    lib.llama_memory_seq_rm(self._mem, seq, 0, -1)
                    raise BackendError(f"llama.cpp decode failed (code {rc})")
                for j, w in enumerate(want):
                    if not w:
                        continue
                    ptr = lib.llama_get_logits_ith(self._ctx, j)
                    if not ptr:  # llama.cpp returns NULL for an output it did not keep
                        lib.llama_memory_seq_rm(self._mem, seq, 0, -1)
                        raise BackendError(f"llama.cpp kept no output at position {lo + j}")
                    row = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
                    top = float(row.max())
                    norm = top + float(np.log(np.exp(row - top, dtype=np.float64).sum()))
                    out.append(float(row[ids[lo + j + 1]]) - norm)
            self._held[seq] = ids
            return out, keep

    def _choose(self, ids: list[int], start: int, reuse: bool) -> tuple[int, int]:
        """The sequence slot to use and how many of its tokens to keep: the longest common
        prefix (never past ``start - 1``: that position's output is needed), else the least
        recently used slot from scratch."""
        self._clock += 1
        if not reuse:
            seq, keep = 0, 0
        else:
            best = [(_common(h, ids), -self._used[s], s) for s, h in enumerate(self._held)]
            common, _, seq = max(best)
            keep = min(common, start - 1)
            if keep == 0:
                seq = min(range(self.n_seqs), key=lambda s: self._used[s])
        self._used[seq] = self._clock
        return seq, keep

    def close(self) -> None:
        with self._lock:
            if self._ctx is None:
                return
            lib, _ = _library()
            lib.llama_free(self._ctx)
            lib.llama_model_free(self._model)
            self._ctx = self._model = self._mem = None
            self._held = [[] for _ in range(self.n_seqs)]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _batch(tokens: list[int], pos0: int, seq: int, want: list[bool]) -> _Batch:
    n = len(tokens)
    sid = (ctypes.c_int32 * 1)(seq)
    ptr = ctypes.cast(sid, ctypes.POINTER(ctypes.c_int32))
    batch = _Batch(n, (ctypes.c_int32 * n)(*tokens), None,
                   (ctypes.c_int32 * n)(*range(pos0, pos0 + n)), (ctypes.c_int32 * n)(*([1] * n)),
                   (ctypes.POINTER(ctypes.c_int32) * n)(*([ptr] * n)),
                   (ctypes.c_int8 * n)(*(1 if w else 0 for w in want)))
    batch._keep = sid  # type: ignore[attr-defined]  # the seq id array must outlive the call
    return batch
