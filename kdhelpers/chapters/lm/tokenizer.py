"""Characters as tokens: the tokenizer, vocabulary maps between tokenizers, padding."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kdhelpers.validate import check_int as _check_int
from kdhelpers.validate import (
    check_texts,
    check_token_lists,
)

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


UNK_CHAR = "\N{REPLACEMENT CHARACTER}"


def _check_texts(texts: object) -> list[str]:
    """A non-empty list of strings."""
    return check_texts("texts", texts)


def _check_sequences(name: str, seqs: object) -> list[list[int]]:
    """A non-empty list of token-id lists, each with at least 2 tokens (one prediction)."""
    seqs = check_token_lists(name, seqs)
    if not seqs:
        raise ValueError(f"{name} is empty")
    short = [i for i, s in enumerate(seqs) if len(s) < 2]
    if short:
        raise ValueError(f"{name}[{short[0]}] has fewer than 2 tokens: nothing to predict")
    return seqs


@dataclass(frozen=True)
class CharTokenizer:
    """Characters as tokens, after 4 special ids (pad 0, bos 1, eos 2, unk 3); optionally lowercased."""

    chars: tuple[str, ...]
    lowercase: bool = False

    def __post_init__(self) -> None:
        if any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise ValueError("chars must be single characters")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("chars must not repeat")
        object.__setattr__(
            self, "_index", {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(self.chars)}
        )

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        """Number of ids: the 4 special tokens plus one per character."""
        return len(SPECIAL_TOKENS) + len(self.chars)

    def normalize(self, text: str) -> str:
        """The text as this tokenizer sees it (lowercased if `lowercase`)."""
        return text.lower() if self.lowercase else text

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """[bos] + one id per character (unknown ones -> unk) + [eos], cut to `max_length` ids (eos dropped then)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str (got {type(text).__name__})")
        ids = [BOS_ID] + [self._index.get(c, UNK_ID) for c in self.normalize(text)] + [EOS_ID]  # type: ignore[attr-defined]
        if max_length is not None:
            _check_int("max_length", max_length, 2)
            ids = ids[:max_length]
        return ids

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """encode() for every text."""
        return [self.encode(t, max_length) for t in _check_texts(texts)]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Characters of the ids up to the first eos; pad and bos are skipped, unk shows as U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"ids must be ints (got {type(i).__name__})")
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside this vocabulary (0..{self.vocab_size - 1})")
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            out.append(UNK_CHAR if i == UNK_ID else self.chars[i - len(SPECIAL_TOKENS)])
        return "".join(out)

    def token(self, i: int) -> str:
        """The readable name of one id (a character or a special token)."""
        return SPECIAL_TOKENS[i] if i < len(SPECIAL_TOKENS) else self.chars[i - len(SPECIAL_TOKENS)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (for checkpoints)."""
        return {"chars": "".join(self.chars), "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CharTokenizer:
        """The tokenizer described by to_dict()."""
        return cls(tuple(record["chars"]), bool(record.get("lowercase", False)))


def build_char_tokenizer(
    texts: Sequence[str], lowercase: bool = False, min_count: int = 1
) -> CharTokenizer:
    """A CharTokenizer over the characters seen at least `min_count` times in `texts` (most frequent first)."""
    texts = _check_texts(texts)
    _check_int("min_count", min_count, 1)
    counts = Counter("".join(t.lower() if lowercase else t for t in texts))
    chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    if not chars:
        raise ValueError(f"no character occurs {min_count} or more times")
    return CharTokenizer(tuple(chars), lowercase)


def vocab_map(source: CharTokenizer, target: CharTokenizer) -> torch.Tensor:
    """For each id of `source`, the id of `target` its character becomes (after target's lowercasing), else unk."""
    if not isinstance(source, CharTokenizer) or not isinstance(target, CharTokenizer):
        raise TypeError("source and target must be CharTokenizers")
    out = list(range(len(SPECIAL_TOKENS)))
    for c in source.chars:
        ids = target.encode(c)[1:-1]
        out.append(ids[0] if len(ids) == 1 else UNK_ID)
    return torch.tensor(out, dtype=torch.long)


def project_logits(
    logits: torch.Tensor, mapping: torch.Tensor, target_vocab_size: int
) -> torch.Tensor:
    """Log-probabilities over a coarser vocabulary: the probabilities of source ids that map to one
    target id are summed."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor")
    if (
        not isinstance(mapping, torch.Tensor)
        or mapping.dim() != 1
        or mapping.shape[0] != logits.shape[-1]
    ):
        raise ValueError(
            f"mapping must be a 1-d tensor with one entry per source id ({logits.shape[-1]})"
        )
    if mapping.is_floating_point() or mapping.is_complex() or mapping.dtype == torch.bool:
        raise TypeError(
            f"mapping must hold integer target ids (got dtype {mapping.dtype}): build it with "
            "vocab_map(source, target), or convert it with mapping.long()"
        )
    _check_int("target_vocab_size", target_vocab_size, 2)
    if mapping.min() < 0 or mapping.max() >= target_vocab_size:
        raise ValueError(f"mapping values must lie in [0, {target_vocab_size - 1}]")
    probs = F.softmax(logits.float(), dim=-1)
    out = torch.zeros(*probs.shape[:-1], target_vocab_size, dtype=probs.dtype, device=probs.device)
    out.index_add_(probs.dim() - 1, mapping.to(probs.device), probs)
    return out.clamp_min(1e-12).log()


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists to the longest: (input_ids, attention_mask), both (batch, longest) int64."""
    seqs = [list(s) for s in seqs]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_batch needs at least one sequence and no empty sequence")
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask


def count_tokens(seqs: Sequence[Sequence[int]]) -> int:
    """Number of predicted tokens in the sequences (every token after the first of each)."""
    return sum(max(0, len(s) - 1) for s in seqs)
