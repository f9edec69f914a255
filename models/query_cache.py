"""Encoded queries kept on disk, so that a query asked before needs no text encoder.

Loading the sentence encoder (and the ``transformers`` modelling code it needs) costs more than
the rest of a small run's setup; its answer for a query never changes while its files do not. So
the :class:`~mtrs_geo.models.text.TextEmbeds` of the queries of a run are kept in a small
safetensors file, keyed by:

* the text encoder and tokenizer folders: every file under 1 MiB by content (configs, vocabulary,
  tokenizer), larger ones (the weights) by name, size and modification time;
* the longest query in tokens, and the exact texts of the run's queries, in order (several queries
  are encoded as one padded batch, so a batch is kept as it was encoded).

A cache hit gives the very tensors the encoder gave. Only a frozen sentence encoder loaded from
its folder is cached (an LLM, or a text model whose weights are in the checkpoint, is not). The
cache folder is ``$XDG_CACHE_HOME/mtrs`` (default ``~/.cache/mtrs``); a folder that cannot be
written only means no caching.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtrs_geo.models.query_text import is_any_change

if TYPE_CHECKING:  # torch only where tensors are made: the CPU runtime reads keys and arrays
    import torch

    from mtrs_geo.models.text import TextBranch, TextEmbeds

FORMAT = "mtrs-query-embeds-1"
_SMALL_FILE = 1 << 20  # bytes: files up to this size are hashed by content
_SUBFOLDER = "query-embeddings"


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/mtrs``, or ``~/.cache/mtrs`` when it is not set."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mtrs"


def _hash_folder(digest: hashlib._Hash, folder: Path) -> None:
    digest.update(f"folder {folder.resolve()}\n".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)} {stat.st_size}\n".encode())
        if stat.st_size <= _SMALL_FILE:
            digest.update(path.read_bytes())
        else:
            digest.update(f"{stat.st_mtime_ns}\n".encode())


class QueryCache:
    """Encoded queries of a text branch, on disk under ``folder`` (None: no cache)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = None if folder is None else Path(folder) / _SUBFOLDER
        self._fingerprints: weakref.WeakKeyDictionary[TextBranch, str | None] = (
            weakref.WeakKeyDictionary()
        )

    def key(self, branch: TextBranch, texts: Sequence[str]) -> str | None:
        """Return the cache key of ``texts`` encoded by ``branch`` (None: not cached)."""
        if self.folder is None:
            return None
        if branch not in self._fingerprints:  # the folders are read once per branch
            owned = branch.mode != "sentence" or branch.encoder is not None
            self._fingerprints[branch] = (
                None
                if owned or branch.model_dir is None
                else encoder_fingerprint(branch.model_dir, branch.tokenizer_dir, branch.max_length)
            )
        return self.key_of(self._fingerprints[branch], texts)

    def key_of(self, fingerprint: str | None, texts: Sequence[str]) -> str | None:
        """Return the cache key of ``texts`` for an :func:`encoder_fingerprint` (None: none)."""
        if self.folder is None or fingerprint is None:
            return None
        digest = hashlib.sha256(f"{fingerprint}\n{len(texts)}\n".encode())
        for text in texts:
            digest.update(f"{len(text)}:{text}\n".encode())
        return digest.hexdigest()

    def load_arrays(self, key: str | None) -> dict[str, Any] | None:
        """Return the numpy arrays kept under ``key`` (None: none, or an unreadable file)."""
        path = self._path(key)
        if path is None:
            return None
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            arrays = load_file(path)
        except (OSError, SafetensorError):
            return None
        return arrays if {"tokens", "mask", "empty"} <= set(arrays) else None

    def _path(self, key: str | None) -> Path | None:
        if key is None or self.folder is None:
            return None
        path = self.folder / f"{key}.safetensors"
        return path if path.is_file() else None

    def load(self, key: str | None) -> TextEmbeds | None:
        """Return the embeddings kept under ``key`` (None: none, or an unreadable file)."""
        path = self._path(key)
        if path is None:
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from mtrs_geo.models.text import TextEmbeds

        try:
            tensors = load_file(path)
            return TextEmbeds(
                tensors["tokens"], tensors["mask"], tensors["empty"], tensors.get("pooled")
            )
        except (OSError, KeyError, SafetensorError):
            return None

    def store(self, key: str | None, embeds: TextEmbeds) -> None:
        """Keep ``embeds`` under ``key`` (written whole or not at all; errors are ignored)."""
        tensors = {"tokens": embeds.tokens, "mask": embeds.mask, "empty": embeds.empty}
        if embeds.pooled is not None:
            tensors["pooled"] = embeds.pooled
        self.store_arrays(key, {name: t.detach().cpu().numpy() for name, t in tensors.items()})

    def store_arrays(self, key: str | None, arrays: dict[str, Any]) -> None:
        """Keep numpy ``arrays`` (tokens, mask, empty, pooled) under ``key``, as :meth:`store`."""
        if key is None or self.folder is None:
            return
        from safetensors.numpy import save_file

        from mtrs_geo.errors import InputError
        from mtrs_geo.write import atomic_output

        arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
        path = self.folder / f"{key}.safetensors"
        # A cache that cannot be written is no cache: the run goes on without it.
        with contextlib.suppress(OSError, InputError):
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_output(path) as partial:
                save_file(arrays, str(partial), metadata={"format": FORMAT})


def encoder_fingerprint(model_dir: str, tokenizer_dir: str, max_length: int) -> str | None:
    """Fingerprint a frozen sentence encoder by its folders (None: a folder cannot be read)."""
    digest = hashlib.sha256(f"{FORMAT}\nmax_length {max_length}\n".encode())
    try:
        for folder in dict.fromkeys((model_dir, tokenizer_dir)):
            _hash_folder(digest, Path(folder))
    except OSError:
        return None
    return digest.hexdigest()


def cached_embeds(
    cache: QueryCache, branch: TextBranch, texts: list[str], device: torch.device
) -> TextEmbeds:
    """Return ``branch``'s embeddings of ``texts`` from ``cache``, else encode and keep them.

    Queries that all ask for any change need no encoder (and no cache).
    """
    import torch

    if all(is_any_change(text) for text in texts):
        return branch.encode(texts, device)
    key = cache.key(branch, texts)
    embeds = cache.load(key)
    if embeds is not None:
        return embeds.to(device)
    from mtrs_geo.models.loading import quiet_loading

    with quiet_loading(), torch.inference_mode():
        embeds = branch.encode(texts, device)
    cache.store(key, embeds)
    return embeds
