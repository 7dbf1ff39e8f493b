"""Reader and writer for the prompt/completion JSONL files of Berglund et al. (2023).

Their experiment-1 data (``p2d_prompts_train.jsonl``, ``d2p_reverse_prompts_test.jsonl``, ...)
holds one JSON object per line, ``{"prompt": "...", "completion": "..."}``; the completion
carries its leading space (``" Daphne Barrington"``). Which fact and direction a pair states is
not recorded, so the caller says which split and direction a whole file is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from facts.io import read_json_lines, write_text_atomic
from facts.language import TextTokenizer, bos_prefix, encode_pair
from facts.schema import DIRECTIONS, SPLITS, Direction, FactError, Split
from facts.tokens import Example

Pair = tuple[str, str]
"""``(prompt, completion)``."""
KEYS: tuple[str, ...] = ("prompt", "completion")


def load_prompt_completion_jsonl(path: str | os.PathLike[str]) -> list[Pair]:
    """Every ``(prompt, completion)`` of a JSONL file, in order; blank lines are skipped.

    Malformed JSON, a missing key or a non-string value raise :class:`FactError` naming file:line.
    """
    path = Path(path)
    pairs = []
    for number, record in read_json_lines(path, "prompt/completion"):
        if not isinstance(record, dict):
            raise FactError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in KEYS if key not in record]
        if missing:
            raise FactError(f"{path}:{number}: missing key(s) {missing}")
        for key in KEYS:
            if not isinstance(record[key], str):
                raise FactError(f"{path}:{number}: {key!r} must be a string, got {type(record[key]).__name__}")
        pairs.append((record["prompt"], record["completion"]))
    if not pairs:
        raise FactError(f"{path}: holds no prompt/completion pairs")
    return pairs


def save_prompt_completion_jsonl(pairs: Sequence[Pair], path: str | os.PathLike[str]) -> Path:
    """Write ``pairs`` in the same format, atomically (temporary file, then rename).

    Text UTF-8 cannot store (a lone surrogate) raises :class:`FactError` naming the pair.
    """
    path = Path(path)
    lines = []
    for index, (prompt, completion) in enumerate(pairs):
        line = json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as error:
            raise FactError(f"{path}: pair {index} holds U+{ord(error.object[error.start]):04X}, a lone surrogate "
                            f"that UTF-8 cannot store") from None
        lines.append(line)
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def examples_from_pairs(
    pairs: Sequence[Pair],
    tokenizer: TextTokenizer,
    split: Split,
    direction: Direction,
    prefix: tuple[int, ...] | None = None,
) -> list[Example]:
    """One :class:`Example` per pair, ``fact`` = its position; the completion is the answer.

    Prompt and completion are tokenized jointly and split at the boundary, trailing prompt
    spaces moving to the completion (:func:`~facts.language.encode_pair`). ``prefix`` ids go
    before every prompt, by default :func:`~facts.language.bos_prefix` (BOS exactly when the
    tokenizer adds it itself).
    """
    prefix = bos_prefix(tokenizer) if prefix is None else prefix
    if split not in SPLITS:
        raise FactError(f"split must be one of {SPLITS}, got {split!r}")
    if direction not in DIRECTIONS:
        raise FactError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    examples = []
    for index, (prompt, completion) in enumerate(pairs):
        prompt_ids, answer_ids = encode_pair(tokenizer, prompt, completion, f"pair {index} ({prompt!r})")
        examples.append(Example(prefix + prompt_ids, answer_ids, index, direction, split))
    return examples
