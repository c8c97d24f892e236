"""Entity-level precision, recall and F1 of tag sequences (BIO / BIOES), as conlleval and seqeval count them.

An entity is a (type, first word, last word) chunk read from the tags by conlleval's rules (seqeval's
default mode): a chunk ends when the next tag cannot continue it and starts at B-/S-, at an I-/E- that does not
continue the previous chunk, or where the type changes. A predicted entity counts only when its type and both
boundaries match a true one exactly. Micro averages pool all entities; each type gets its own row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def _split(tag: str) -> tuple[str, str]:
    if tag == "O" or not tag:
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return (prefix, kind) if kind else ("O", "")


def _ends(prev: str, tag: str, prev_kind: str, kind: str) -> bool:
    """Does the chunk holding the previous word end before this word?"""
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev != "O" and prev_kind != kind


def _starts(prev: str, tag: str, prev_kind: str, kind: str) -> bool:
    """Does a chunk start at this word?"""
    if tag in ("B", "S"):
        return True
    if tag in ("I", "E") and prev in ("E", "S", "O"):
        return True
    return tag != "O" and prev_kind != kind


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) word indices of each entity in one sentence's tags (inclusive ends)."""
    out, prev, prev_kind, begin = [], "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        cur, kind = _split(tag)
        if _ends(prev, cur, prev_kind, kind):
            out.append((prev_kind, begin, i - 1))
        if _starts(prev, cur, prev_kind, kind):
            begin = i
        prev, prev_kind = cur, kind
    return out


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def entity_metrics(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict:
    """Micro precision/recall/F1 over all entities, per-type rows, macro F1, and word accuracy.

    ``y_true``/``y_pred``: one tag list per sentence, of equal lengths.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true sentences but {len(y_pred)} predicted")
    tp, n_pred, n_true = Counter(), Counter(), Counter()
    correct = total = 0
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags but {len(p)} predicted")
        te, pe = set(entities(t)), set(entities(p))
        for kind, *_ in te:
            n_true[kind] += 1
        for kind, *_ in pe:
            n_pred[kind] += 1
        for kind, *_ in te & pe:
            tp[kind] += 1
        correct += sum(a == b for a, b in zip(t, p))
        total += len(t)
    types = sorted(set(n_true) | set(n_pred))
    per_type = {k: {**_prf(tp[k], n_pred[k], n_true[k]), "support": n_true[k]} for k in types}
    micro = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_true.values()))
    macro_f1 = sum(per_type[k]["f1"] for k in types) / len(types) if types else 0.0
    return {**micro, "f1_macro": macro_f1, "word_accuracy": correct / total if total else 0.0,
            "entities_true": sum(n_true.values()), "entities_pred": sum(n_pred.values()), "per_type": per_type}
