"""Tiny SentencePiece-style tokenizers built offline, shaped like the real ones of Llama 2 / Mistral, Gemma and Phi-3.

`train_sentencepiece` trains a SentencePiece BPE model with byte fallback (what those checkpoints'
`tokenizer.model` is) on a few hundred lines of English docs and Chinese dialogue.
`sentencepiece_tokenizer` turns it into a fast tokenizer the way transformers' converters do
(pieces as the vocabulary, merges generated from the piece scores) and gives it the family's
pre-tokenization: Metaspace (Llama 2, Mistral), `▁` without a prefix (Gemma), a Prepend
normalizer (Phi-3). `bpe_tokenizer` trains the same shape with the `tokenizers` library
instead, so its merges are a trainer's ranks and there is no tokenizer.model at all.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from tests.conftest import REPO, SHARED_DATA

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


def corpus() -> list[str]:
    """About 560 lines: this repo's export and data docs (English, code, numbers) and Chinese dialogue lines."""
    lines = [ln for doc in ("export.md", "data.md") for ln in (REPO / "docs" / doc).read_text().splitlines()
             if ln.strip()]
    records = json.loads((SHARED_DATA / "huanhuan.json").read_text(encoding="utf-8"))[:60]
    return lines[:500] + [r["instruction"] + r["output"] for r in records]


def train_sentencepiece(path: Path, *, prefix: bool = True, vocab_size: int = 900) -> Path:
    """Write a SentencePiece BPE `tokenizer.model` with byte fallback; `prefix` is its add_dummy_prefix.

    Ids follow the family: Llama (prefix) <unk> 0, <s> 1, </s> 2; Gemma (no prefix) <pad> 0,
    <eos> 1, <bos> 2, <unk> 3, <mask> 4.
    """
    import sentencepiece as spm

    ids = ({"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1} if prefix else
           {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3, "pad_piece": "<pad>", "eos_piece": "<eos>",
            "bos_piece": "<bos>", "control_symbols": ["<mask>"]})
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, character_coverage=0.99,
                                   split_digits=True, add_dummy_prefix=prefix, remove_extra_whitespaces=False,
                                   allow_whitespace_only_pieces=True, normalization_rule_name="identity",
                                   num_threads=1, minloglevel=2, **ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def sentencepiece_tokenizer(model_file: Path, shape: str, *, keep_model_file: bool = True):
    """A fast tokenizer from a SentencePiece model, shaped as `shape` (llama, gemma, phi3), with ChatML tokens added.

    With keep_model_file the tokenizer knows its tokenizer.model (as one loaded from a checkpoint
    folder holding both files does); without, only tokenizer.json is left (as in a run folder).
    """
    import sentencepiece as spm
    from tokenizers import normalizers
    from transformers import GemmaTokenizer, LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = generate_merges(vocab, {p: sp.get_score(i) for p, i in vocab.items()})
    extra = {"vocab_file": str(model_file)} if keep_model_file else {}
    # BOS first, as the real ones add it (Llama 2, Mistral, Gemma, Phi-3)
    if shape == "gemma":
        tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, **extra)
    else:
        tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, **extra)
    if shape == "phi3":  # Phi-3's tokenizer.json: the prefix and spaces come from the normalizer
        tok.backend_tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend(prepend="\u2581"), normalizers.Replace(pattern=" ", content="\u2581")])
        tok.backend_tokenizer.pre_tokenizer = None
    return _with_chat(tok)


def bpe_tokenizer(vocab_size: int = 900):
    """A Llama-2-shaped tokenizer trained by the `tokenizers` BPE trainer (byte fallback, Metaspace), no tokenizer.model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                         limit_alphabet=200, show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    # the trainer made <0xXX> special tokens; llama's byte tokens are plain vocabulary entries
    tj = json.loads(tk.to_str())
    tj["added_tokens"] = [a for a in tj["added_tokens"] if not a["content"].startswith("<0x")]
    tj["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                     {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                     {"Sequence": {"id": "B", "type_id": 1}}],
                            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)), bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    return _with_chat(tok)


def _with_chat(tok):
    tok.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    tok.chat_template = CHATML
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
