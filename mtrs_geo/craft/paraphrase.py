"""Optional paraphrasing of grammar expressions through ``transformers``, from a local model folder.

A paraphrase is kept only when it still carries every word that decides what the expression selects
(places, numbers, classes, direction and superlative words); otherwise the grammar's text stays.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from mtrs_geo.craft.language import NUMBER_WORDS, tokens
from mtrs_geo.errors import InputError

# Concepts whose loss would change which instances an expression means; any word of a concept
# keeps it ("newly built" keeps the appearance of "new").
CONCEPTS: dict[str, set[str]] = {
    "appeared": {"new", "newly", "built", "constructed", "appeared", "appear", "added", "formed"},
    "disappeared": {"demolished", "removed", "disappeared", "disappear", "lost", "former", "torn"},
    "transition": {
        "became",
        "turned",
        "replaced",
        "converted",
        "changed",
        "replacing",
        "transformed",
    },
    "largest": {"largest", "biggest"},
    "smallest": {"smallest", "tiniest"},
    "only": {"only", "single"},
    "centre": {"centre", "central", "middle"},
    "brighter": {"brighter"},
    "darker": {"darker"},
    "vegetation": {"vegetation", "greenery", "trees"},
    "elongated": {"elongated", "linear", "narrow"},
    "irregular": {"irregularly", "irregular"},
    "north": {"north", "northern"},
    "south": {"south", "southern"},
    "east": {"east", "eastern"},
    "west": {"west", "western"},
    "top": {"top", "upper"},
    "bottom": {"bottom", "lower"},
    "left": {"left"},
    "right": {"right"},
}


class Paraphraser(Protocol):
    """Rewrites one expression; must be deterministic."""

    def paraphrase(self, text: str) -> str:
        """Return a rewording of ``text``."""
        ...


def _concepts(text: str, class_words: set[str]) -> set[str]:
    words = tokens(text)
    found = {name for name, members in CONCEPTS.items() if members & set(words)}
    found |= {f"class:{w}" for w in words if w in class_words}
    found |= {f"number:{NUMBER_WORDS.index(w)}" for w in words if w in NUMBER_WORDS}
    found |= {f"number:{int(n)}" for n in re.findall(r"\d+", text.replace(",", ""))}
    return found


def decisive_words(text: str, class_words: set[str]) -> set[str]:
    """Return the concepts of ``text`` a paraphrase must keep: kinds, places, classes, numbers."""
    return _concepts(text, class_words)


def keeps_meaning(original: str, paraphrase: str, class_words: set[str]) -> bool:
    """Tell whether ``paraphrase`` keeps every decisive concept of ``original`` and is not empty."""
    if not paraphrase.strip():
        return False
    return _concepts(original, class_words) <= _concepts(paraphrase, class_words)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """Put an exception's message on one line (transformers writes several), ``limit`` chars."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


class TransformersParaphraser:
    """A sequence-to-sequence model from a local folder (``local_files_only``), greedy decoding.

    Args:
        model_dir: folder holding a ``transformers`` seq2seq model and its tokenizer.
        prefix: text put before each expression (e.g. ``"paraphrase: "`` for T5-style models).
        max_new_tokens: longest paraphrase, tokens.

    """

    def __init__(self, model_dir: Path, prefix: str = "paraphrase: ", max_new_tokens: int = 32):
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise InputError(f"paraphrase model folder not found: {model_dir}")
        if not (model_dir / "config.json").is_file():
            raise InputError(
                f"{model_dir} is not a transformers model folder (it has no config.json)"
            )
        try:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # its warnings would come before our one-line error
            try:
                self._tokenizer: Any = AutoTokenizer.from_pretrained(
                    model_dir, local_files_only=True
                )
                self._model: Any = AutoModelForSeq2SeqLM.from_pretrained(
                    model_dir, local_files_only=True
                )
            finally:
                hf_logging.set_verbosity(verbosity)
        except (ImportError, OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"cannot load paraphrase model from {model_dir}: {one_line(exc)}"
            ) from exc
        self._model.eval()
        self._prefix = prefix
        self._max_new_tokens = max_new_tokens

    def paraphrase(self, text: str) -> str:
        """Greedy (deterministic) rewording of ``text``."""
        import torch

        inputs = self._tokenizer(self._prefix + text, return_tensors="pt")
        with torch.no_grad():
            output = self._model.generate(
                **inputs, do_sample=False, num_beams=1, max_new_tokens=self._max_new_tokens
            )
        return str(self._tokenizer.decode(output[0], skip_special_tokens=True)).strip()
