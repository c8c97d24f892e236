"""Remove exact and near-duplicate records, keeping the first occurrence.

Exact: SHA-1 of each record's normalized text fields (`text.record_key`: NFKC, case-folded,
whitespace collapsed, role names included).
Near: MinHash signatures of shingle sets indexed with LSH (datasketch), the method of
Broder, "On the resemblance and containment of documents" (1997) as used for LLM training data
(Lee et al., "Deduplicating Training Data Makes Language Models Better", 2022). Shingles are
character n-grams for Chinese/Japanese/Korean text (no spaces between words) and word n-grams
otherwise, chosen per record by its share of CJK characters. LSH candidates are confirmed with the
MinHash Jaccard estimate, so a record is removed only when its estimated similarity to an earlier
kept record reaches the threshold.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal, Sequence

from tunelab.data.prepare.result import PrepResult, RecordLike, positioned, rejected_row
from tunelab.data.prepare.text import is_cjk_text, normalize_key, record_key, record_text

Mode = Literal["exact", "near", "both"]
ID_KEYS = ("id", "record_id", "uid")
_WORD = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, char_ngram: int = 3, word_ngram: int = 3, cjk_threshold: float = 0.3) -> set[str]:
    """The shingle set of `text`: character n-grams when it is mostly CJK, else word n-grams.

    Text shorter than one n-gram gives a single shingle (the whole normalized text), so short
    records still compare by equality.
    """
    norm = normalize_key(text)
    if is_cjk_text(norm, cjk_threshold):
        chars = re.sub(r"\s+", "", norm)
        if len(chars) <= char_ngram:
            return {chars} if chars else set()
        return {chars[i:i + char_ngram] for i in range(len(chars) - char_ngram + 1)}
    words = _WORD.findall(norm)
    if len(words) <= word_ngram:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + word_ngram]) for i in range(len(words) - word_ngram + 1)}


@lru_cache(maxsize=8)
def _empty_minhash(num_perm: int, seed: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed)  # drawing the permutations is the slow part: do it once


def _minhash(shingle_set: set[str], num_perm: int, seed: int):
    m = _empty_minhash(num_perm, seed).copy()  # never updated itself, so every copy starts empty
    m.update_batch([s.encode("utf-8") for s in sorted(shingle_set)])
    return m


class NearIndex:
    """An incremental MinHash LSH index: ask whether a record is close to one already added, then add it."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, char_ngram: int = 3, word_ngram: int = 3,
                 seed: int = 1) -> None:
        from datasketch import MinHashLSH

        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1] (got {threshold})")
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.char_ngram, self.word_ngram = char_ngram, word_ngram
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sigs: dict[Any, Any] = {}

    def signature(self, record: dict[str, Any]):
        """The MinHash of a record's text shingles."""
        return _minhash(shingles(record_text(record), self.char_ngram, self.word_ngram), self.num_perm, self.seed)

    def find(self, sig) -> tuple[Any, float] | None:
        """(key, estimated Jaccard) of the most similar added record at or above the threshold, else None."""
        best = max(((self.sigs[k].jaccard(sig), k) for k in self.lsh.query(sig)), default=None,
                   key=lambda t: t[0])
        return (best[1], best[0]) if best is not None and best[0] >= self.threshold else None

    def add(self, key: Any, sig) -> None:
        """Index a signature under `key`."""
        self.lsh.insert(key, sig)
        self.sigs[key] = sig


def dedup(records: Sequence[RecordLike], *, mode: Mode = "both", threshold: float = 0.8, num_perm: int = 128,
          char_ngram: int = 3, word_ngram: int = 3, seed: int = 1) -> PrepResult:
    """Drop exact and/or near-duplicate records, keeping the first of each group in input order.

    `threshold` is the Jaccard similarity of shingle sets above which two records are near
    duplicates (0.8 is a common choice; lower removes more). `num_perm` trades accuracy of the
    MinHash estimate for speed. Each removed record becomes a rejected row with ``reason``
    ("exact" or "near"), ``duplicate_of`` (position of the kept record it duplicates),
    ``duplicate_of_index``, ``duplicate_of_id`` when records carry an ``id``/``record_id`` field, and,
    for near duplicates, the estimated ``similarity``.
    Counts: ``input``, ``kept``, ``exact``, ``near``.
    """
    if mode not in ("exact", "near", "both"):
        raise ValueError(f"mode must be 'exact', 'near' or 'both' (got {mode!r})")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (got {threshold})")
    index = NearIndex(threshold, num_perm, char_ngram, word_ngram, seed) if mode in ("near", "both") else None
    result = PrepResult(kept=[])
    seen: dict[str, int] = {}
    rows = positioned(records)

    def ref(j: int) -> dict[str, Any]:
        out: dict[str, Any] = {"duplicate_of": rows[j][1], "duplicate_of_index": j}
        rid = next((rows[j][0][k] for k in ID_KEYS if k in rows[j][0]), None)
        if rid is not None:
            out["duplicate_of_id"] = rid
        return out

    for i, (rec, where) in enumerate(rows):
        result.counts["input"] += 1
        key = record_key(rec)
        if mode in ("exact", "both") and key in seen:
            result.counts["exact"] += 1
            result.rejected.append(rejected_row(i, where, "exact", rec, **ref(seen[key])))
            continue
        seen.setdefault(key, i)  # an exact copy of a near-duplicate points at this first occurrence
        if index is not None:
            sig = index.signature(rec)
            hit = index.find(sig)
            if hit is not None:
                j, sim = hit
                result.counts["near"] += 1
                result.rejected.append(rejected_row(i, where, "near", rec, **ref(j), similarity=round(sim, 4)))
                continue
            index.add(i, sig)
        result.counts["kept"] += 1
        result.kept.append(rec)
    return result
