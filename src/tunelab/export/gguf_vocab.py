"""The tokenizer of a GGUF file: vocabulary, scores, token types, merges, special ids and flags.

A GGUF file has no tokenizer.json; llama.cpp rebuilds the tokenizer from `tokenizer.ggml.*`
metadata. Two kinds of Hugging Face fast tokenizers are written, each the way llama.cpp's
`convert_hf_to_gguf.py` writes it, chosen by `VOCAB_KINDS` from the tokenizer.json:

- **gpt2** (byte-level BPE: GPT-2, SmolLM2, Llama 3, Qwen2/3): tokens in the byte alphabet, the
  merges, and the pre-tokenizer's llama.cpp name (`tokenizer.ggml.pre`);
- **llama** (SentencePiece style: Llama 2, Mistral v0.1-v0.3, Gemma, Phi-3): BPE with
  `byte_fallback`, spaces written as U+2581 `▁`, byte tokens `<0xXX>`. llama.cpp's tokenizer for
  this kind merges the adjacent pair whose joined token has the highest *score*, so scores carry
  the merge order and no merges are written. They come from the `tokenizer.model` SentencePiece
  file when one sits beside the tokenizer and matches it, or else from the merge ranks of
  tokenizer.json (the token the rank-r merge makes scores -r). transformers' GGUF loader rebuilds
  merges from exactly these scores (`generate_merges`), so both readers see the merge order the
  tokenizer was trained with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from tunelab.export.base import ExportError

TT = gguf.TokenType
SPACE = "\u2581"  # SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# llama.cpp's converter scores: tokens added after training, and ids no token uses
ADDED_SCORE = -1000.0
UNUSED_SCORE = -10000.0


@dataclass
class GgufVocab:
    """The tokenizer as GGUF metadata: tokens by id, their llama.cpp types, merges or scores, special ids and flags.

    model: llama.cpp's tokenizer model (`gpt2` byte-level BPE, `llama` SentencePiece style);
    scores: one per token for `llama` (None for `gpt2`); add_space_prefix: whether the tokenizer
    puts `▁` before the text (`llama` only).
    """

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    model: str = "gpt2"
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
    source: str = field(default="tokenizer.json", compare=False)  # where the scores came from


# --- which kind of tokenizer -------------------------------------------------------------------------------------

def _steps(section: dict | None) -> list[dict]:
    """The steps of a tokenizer.json normalizer / pre-tokenizer / decoder (a Sequence flattened, None -> [])."""
    if not section:
        return []
    inner = section.get("normalizers") or section.get("pretokenizers") or section.get("decoders")
    if section.get("type") == "Sequence" and inner is not None:
        return [s for step in inner for s in _steps(step)]
    return [section]


def space_prefix(tj: dict) -> bool | None:
    """Whether a tokenizer.json writes spaces as `▁` and puts one before the text: True/False, or None if it has no `▁`.

    Metaspace pre-tokenizers (Llama 2, Mistral) prepend unless their scheme is "never"; a normalizer
    that replaces " " with "▁" (Gemma, Phi-3) prepends only with a Prepend("▁") step.
    """
    for step in _steps(tj.get("pre_tokenizer")):
        if step.get("type") == "Metaspace" and step.get("replacement", SPACE) == SPACE:
            scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
            return scheme != "never"
    norm = _steps(tj.get("normalizer"))
    if any(s.get("type") == "Replace" and s.get("pattern", {}).get("String") == " " and s.get("content") == SPACE
           for s in norm):
        return any(s.get("type") == "Prepend" and s.get("prepend") == SPACE for s in norm)
    return None


def _is_byte_level(tj: dict) -> bool:
    model_t = tj.get("model", {})
    return (model_t.get("type") == "BPE" and not model_t.get("byte_fallback")
            and (tj.get("decoder") or {}).get("type") == "ByteLevel")


def _is_sentencepiece(tj: dict) -> bool:
    model_t = tj.get("model", {})
    return model_t.get("type") == "BPE" and bool(model_t.get("byte_fallback")) and space_prefix(tj) is not None


# --- shared reading ----------------------------------------------------------------------------------------------

def _tokens_by_id(tokenizer: Any, vocab_size: int) -> dict[int, str]:
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ExportError(f"the tokenizer has token id {max(by_id)} but the model's vocab_size is {vocab_size}; "
                          "resize the embeddings (model.resize_token_embeddings(len(tokenizer))) before exporting")
    return by_id


def _specials_and_flags(tokenizer: Any) -> tuple[dict[str, int], bool, bool]:
    """(bos/eos/unk/pad ids, add_bos, add_eos): the flags from what the tokenizer really does to a probe text."""
    probe = tokenizer("a")["input_ids"]
    special = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")}
    return ({k: int(v) for k, v in special.items() if v is not None},
            special["bos"] is not None and probe[:1] == [special["bos"]],
            special["eos"] is not None and probe[-1:] == [special["eos"]])


# --- gpt2: byte-level BPE ----------------------------------------------------------------------------------------

def byte_level_vocab(tokenizer: Any, tj: dict, vocab_size: int, pre: str | None = None) -> GgufVocab:
    """A byte-level BPE tokenizer (GPT-2 style: SmolLM2, Llama 3, Qwen2) as GGUF vocabulary metadata.

    Ids the tokenizer does not use up to the model's vocab_size become `[PAD<id>]` UNUSED
    tokens, as llama.cpp's converter writes them, so the token list matches the embedding rows.
    """
    by_id = _tokens_by_id(tokenizer, vocab_size)
    added = {i: t.special for i, t in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TT.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(TT.NORMAL if i not in added else TT.CONTROL if added[i] else TT.USER_DEFINED)
    special, add_bos, add_eos = _specials_and_flags(tokenizer)
    return GgufVocab(tokens=tokens, token_types=[int(t) for t in types],
                     merges=_merges(tj["model"].get("merges") or []),
                     pre=pre or pre_tokenizer_name(tj.get("pre_tokenizer")), special_ids=special,
                     add_bos=add_bos, add_eos=add_eos)


def _merges(merges: list) -> list[str]:
    """Merges as llama.cpp's "a b" strings; a space inside a part is written as U+0120+... (as gguf.SpecialVocab does)."""
    if merges and not isinstance(merges[0], str):
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    return list(merges)


# The Split regex of a tokenizer.json pre-tokenizer -> llama.cpp's `tokenizer.ggml.pre` name.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE_NAMES: dict[str, str] = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def pre_tokenizer_name(pre_tok: dict | None) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for a tokenizer.json pre-tokenizer, or ExportError if unknown."""
    steps = (pre_tok or {}).get("pretokenizers", [pre_tok] if pre_tok else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp spells the GPT-2 regex "gpt-2" (an unknown name stops its loader)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        name = SPLIT_PRE_NAMES.get(steps[0].get("pattern", {}).get("Regex", ""))
        if name:
            return name
    raise ExportError(f"unknown pre-tokenizer {json.dumps(pre_tok)[:300]}; llama.cpp needs its name "
                      f"(tokenizer.ggml.pre). Pass pre=<name> (e.g. gpt-2, smollm, llama-bpe, qwen2) if you know it")


# --- llama: SentencePiece style ----------------------------------------------------------------------------------

def merge_rank_scores(merges: list) -> dict[str, float]:
    """token -> score from tokenizer.json merges: the token the rank-r merge makes scores -r (its first merge counts).

    llama.cpp (and a reader that rebuilds merges from scores) joins the pair whose token scores
    highest, so the earliest merge wins, as in the BPE the merges describe.
    """
    scores: dict[str, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(left + right, -float(rank))
    return scores


def sentencepiece_model_file(tokenizer: Any) -> Path | None:
    """The `tokenizer.model` the tokenizer was loaded with (its vocab_file, or one in its folder), if there is one."""
    for candidate in (getattr(tokenizer, "vocab_file", None), tokenizer.init_kwargs.get("vocab_file"),
                      Path(str(tokenizer.name_or_path or "")) / "tokenizer.model"):
        if candidate and str(candidate).endswith(".model") and Path(candidate).is_file():
            return Path(candidate)
    return None


def _proto_pieces(path: Path, by_id: dict[int, str]) -> dict[int, tuple[float, int]] | None:
    """id -> (score, type) from a SentencePiece model, or None when its pieces are not the tokenizer's tokens.

    A tokenizer.model that disagrees with tokenizer.json (another checkpoint's file, a vocabulary
    changed after training) or does not parse says nothing about this tokenizer, so it is not used.
    """
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError):
        return None
    if any(by_id.get(i) != sp.id_to_piece(i) for i in range(sp.get_piece_size())):
        return None
    out = {}
    for i in range(sp.get_piece_size()):
        ttype = (TT.UNKNOWN if sp.is_unknown(i) else TT.CONTROL if sp.is_control(i) else
                 TT.UNUSED if sp.is_unused(i) else TT.BYTE if sp.is_byte(i) else TT.NORMAL)
        out[i] = (sp.get_score(i), ttype)
    return out


def sentencepiece_vocab(tokenizer: Any, tj: dict, vocab_size: int, pre: str | None = None) -> GgufVocab:
    """A SentencePiece-style tokenizer (BPE + byte_fallback + `▁`) as llama.cpp's `llama` vocabulary.

    Follows convert_hf_to_gguf.py's `_create_vocab_sentencepiece`: pieces with their scores and
    types (unknown, control, unused, byte `<0xXX>`, normal); the tokenizer's added tokens get
    score -1000 and are UNKNOWN (the unk token), CONTROL when special, USER_DEFINED (with `▁`
    written as a space, since llama.cpp matches them in the raw text) when not; unused ids up to
    vocab_size are `[PAD<id>]` UNUSED. Scores come from the matching `tokenizer.model` if there
    is one, else from the merge ranks (`merge_rank_scores`); tokens no merge makes score below
    every merge.
    """
    by_id = _tokens_by_id(tokenizer, vocab_size)
    proto_file = sentencepiece_model_file(tokenizer)
    proto = _proto_pieces(proto_file, by_id) if proto_file else None
    merges = tj["model"].get("merges") or []
    ranked = merge_rank_scores(merges)
    unmerged = -float(len(merges))
    added = tokenizer.added_tokens_decoder
    unk = tokenizer.unk_token_id
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            token, ttype, score = f"[PAD{i}]", TT.UNUSED, UNUSED_SCORE
        elif i in added:
            ttype = TT.UNKNOWN if i == unk else TT.CONTROL if added[i].special else TT.USER_DEFINED
            score = ADDED_SCORE
            if ttype == TT.USER_DEFINED:
                token = token.replace(SPACE, " ")
        elif proto is not None and i in proto:
            score, ttype = proto[i]
        elif _BYTE_TOKEN.fullmatch(token):
            ttype, score = TT.BYTE, 0.0
        else:
            ttype, score = TT.NORMAL, ranked.get(token, unmerged)
        tokens.append(token)
        types.append(int(ttype))
        scores.append(float(score))
    special, add_bos, add_eos = _specials_and_flags(tokenizer)
    return GgufVocab(tokens=tokens, token_types=types, merges=[], pre=pre or "default", special_ids=special,
                     add_bos=add_bos, add_eos=add_eos, model="llama", scores=scores,
                     add_space_prefix=bool(space_prefix(tj)),
                     source=proto_file.name if proto is not None else "tokenizer.json")


# --- registry, entry point, writer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class VocabKind:
    """A tokenizer kind GGUF export writes: how to recognise its tokenizer.json, how to read it, an example."""

    matches: Callable[[dict], bool]
    read: Callable[..., GgufVocab]
    describe: str


VOCAB_KINDS: dict[str, VocabKind] = {
    "gpt2": VocabKind(_is_byte_level, byte_level_vocab,
                      "byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2/Qwen3)"),
    "llama": VocabKind(_is_sentencepiece, sentencepiece_vocab,
                       "SentencePiece-style BPE with byte_fallback and the '▁' space (Llama 2, Mistral v0.1-v0.3, "
                       "Gemma, Phi-3)"),
}


def _describe(tj: dict) -> str:
    model_t = tj.get("model", {})
    parts = [str(model_t.get("type"))]
    if model_t.get("type") == "BPE":
        parts.append("with byte_fallback" if model_t.get("byte_fallback") else "without byte_fallback")
    pre = [s.get("type") for s in _steps(tj.get("pre_tokenizer"))]
    dec = [s.get("type") for s in _steps(tj.get("decoder"))]
    return f"{' '.join(parts)}, pre-tokenizer {pre or None}, decoder {dec or None}"


def tokenizer_vocab(tokenizer: Any, vocab_size: int, pre: str | None = None) -> GgufVocab:
    """Read a fast tokenizer into GGUF vocabulary metadata, by the first kind of VOCAB_KINDS its tokenizer.json matches.

    Any other kind (Unigram, WordPiece, BPE without either convention) is refused with the kinds
    that are written.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"GGUF export needs a fast (tokenizers) tokenizer; got {type(tokenizer).__name__}")
    tj = json.loads(backend.to_str())
    for kind in VOCAB_KINDS.values():
        if kind.matches(tj):
            return kind.read(tokenizer, tj, vocab_size, pre)
    supported = "; ".join(f"{name}: {k.describe}" for name, k in VOCAB_KINDS.items())
    raise ExportError(f"GGUF export does not write this tokenizer ({_describe(tj)}). It writes: {supported}. "
                      "Export --format safetensors and convert with llama.cpp's convert_hf_to_gguf.py")


def add_vocab(writer: gguf.GGUFWriter, vocab: GgufVocab, chat_template: str | None) -> None:
    """Write the tokenizer metadata (tokenizer.ggml.*) and the chat template (tokenizer.chat_template)."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.model == "gpt2" or vocab.merges:
        writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
