"""GGUF export of SentencePiece-style tokenizers (Llama 2, Mistral, Gemma, Phi-3 shapes) as llama.cpp's `llama` vocabulary.

Each tokenizer is built offline (tests/export/spm_tokenizers.py) and attached to a tiny random
model of its family. The file is checked three ways: its metadata as gguf's reader sees it; the
tokenizer and model transformers' GGUF loader rebuilds from it (same ids, same chat prompt, same
logits); and the scores run through llama.cpp's own SentencePiece algorithm (written out below),
which must give the tokenizer's ids.
"""

from __future__ import annotations

import json
import os
import re
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader
from gguf import TokenType as TT
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.export.conftest import family_model
from tests.export.llama_cpp import TOOL_ENV, compare, run_tool
from tests.export.spm_tokenizers import (
    CHAT_TOKENS,
    bpe_tokenizer,
    sentencepiece_tokenizer,
    train_sentencepiece,
)
from tunelab.export import ExportError, export
from tunelab.export.gguf_vocab import tokenizer_vocab

VOCAB = 1024  # the model's embedding rows: the tokenizer's ~900 tokens, then [PAD<id>] rows

TEXTS = ["Hello world! 12345 and 3.14", " leading space", "  two  spaces\tand\ttabs\n\nnewlines\n",
         "皇上万福金安。今天天气很好", "emoji 🙂 and 🦙 need byte fallback", "x", "trailing  ",
         "tunelab export runs/x --format gguf --quant q4_k_m", "naïve café, Ærø, Ελληνικά"]
CHAT = "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"

# case -> (model family, tokenizer shape, where the scores come from)
CASES = {
    "llama-spm-model": ("llama", "llama", "tokenizer.model"),
    "mistral-spm-json": ("mistral", "llama", "tokenizer.json"),
    "gemma2-spm-model": ("gemma2", "gemma", "tokenizer.model"),
    "gemma3-spm-json": ("gemma3", "gemma", "tokenizer.json"),
    "phi3-spm-model": ("phi3", "phi3", "tokenizer.model"),
    "llama-bpe-trainer-json": ("llama", "bpe", "tokenizer.json"),
}


@pytest.fixture(scope="module")
def spm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    return {"prefix": train_sentencepiece(root / "llama" / "tokenizer.model", prefix=True),
            "no-prefix": train_sentencepiece(root / "gemma" / "tokenizer.model", prefix=False)}


@pytest.fixture(scope="module")
def tokenizers(spm_files):
    out = {}
    for case, (_, shape, source) in CASES.items():
        if shape == "bpe":
            out[case] = bpe_tokenizer()
        else:
            spm = spm_files["no-prefix" if shape == "gemma" else "prefix"]
            out[case] = sentencepiece_tokenizer(spm, shape, keep_model_file=source == "tokenizer.model")
    return out


@pytest.fixture(scope="module")
def exported(tokenizers, tmp_path_factory):
    """case -> (source model, tokenizer, GGUF path), each exported in F32."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for case, (family, _, _) in CASES.items():
        tok, model = tokenizers[case], family_model(family, vocab=VOCAB)
        out[case] = (model, tok, export(model, tok, tok.chat_template, "gguf", root / f"{case}.gguf", quant="f32"))
    return out


def fields(path) -> dict:
    return {k: v.contents() for k, v in GGUFReader(str(path)).fields.items()}


@pytest.mark.parametrize("case", CASES)
def test_metadata_is_llama_cpp_sentencepiece_vocabulary(case, exported, spm_files):
    _, tok, path = exported[case]
    _, shape, source = CASES[case]
    f = fields(path)
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.pre"] == "default"
    assert "tokenizer.ggml.merges" not in f  # llama.cpp merges by score for this kind
    tokens, types, scores = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"], f["tokenizer.ggml.scores"]
    assert len(tokens) == len(types) == len(scores) == VOCAB
    by_id = {i: t for t, i in tok.get_vocab().items()}
    assert tokens[:len(tok)] == [by_id[i] for i in range(len(tok))]
    assert tokens[len(tok):] == [f"[PAD{i}]" for i in range(len(tok), VOCAB)]
    assert set(types[len(tok):]) == {TT.UNUSED}
    assert types[tok.unk_token_id] == TT.UNKNOWN
    for special in (tok.bos_token_id, tok.eos_token_id, *tok.convert_tokens_to_ids(CHAT_TOKENS)):
        assert types[special] == TT.CONTROL
    assert [t for t, k in zip(tokens, types) if k == TT.BYTE] == [f"<0x{b:02X}>" for b in range(256)]
    assert f["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert f["tokenizer.ggml.unknown_token_id"] == tok.unk_token_id
    assert f["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_eos_token"] is False
    assert f["tokenizer.ggml.add_space_prefix"] is (shape != "gemma")
    assert f["tokenizer.chat_template"] == tok.chat_template
    normal = [i for i, k in enumerate(types) if k == TT.NORMAL]
    if source == "tokenizer.model":  # the SentencePiece model's own scores
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(spm_files["no-prefix" if shape == "gemma" else "prefix"]))
        assert [scores[i] for i in normal] == [sp.get_score(i) for i in normal]
    else:  # a merged token scores minus the rank of the first merge that makes it
        merges = [m.split(" ") if isinstance(m, str) else m for m in
                  json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
        for rank in (0, 1, 17, 100, len(merges) - 1):
            made = "".join(merges[rank])
            first = next(k for k, pair in enumerate(merges) if "".join(pair) == made)
            assert scores[tokens.index(made)] == -first
        singles = [scores[i] for i in normal if len(tokens[i]) == 1]
        assert max(singles) < -(len(merges) - 1)  # no merge makes them: below every merged token


@pytest.mark.parametrize("case", CASES)
def test_transformers_reload_gives_the_same_ids_template_and_logits(case, exported):
    model, tok, path = exported[case]
    back = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in [*TEXTS, CHAT, CHAT + TEXTS[3]]:
        assert back(text)["input_ids"] == tok(text)["input_ids"], (text, back.tokenize(text), tok.tokenize(text))
    msgs = [{"role": "user", "content": "What is 2+2? 皇上 🙂"}]
    assert (back.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    assert (back.bos_token, back.eos_token) == (tok.bos_token, tok.eos_token)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([tok(CHAT + TEXTS[4])["input_ids"][:17], tok(TEXTS[2] + "🙂")["input_ids"][:17]])
    with torch.no_grad():
        assert (model(ids).logits - loaded(ids).logits).abs().max().item() <= 1e-5


def llama_cpp_spm(text: str, tokens: list[str], scores: list[float]) -> list[int]:
    """llama.cpp's SentencePiece merging (llm_tokenizer_spm) of a `▁`-marked text: the adjacent pair whose joined
    token scores highest (leftmost on ties) is merged until no pair makes a token; a symbol that is not a token
    falls back to its UTF-8 bytes <0xXX>."""
    ids = {t: i for i, t in reversed(list(enumerate(tokens)))}
    symbols = list(text)
    while True:
        pairs = [(-scores[ids[a + b]], i) for i, (a, b) in enumerate(pairwise(symbols)) if a + b in ids]
        if not pairs:
            break
        _, i = min(pairs)
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return [j for s in symbols for j in ([ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode()])]


def marked(tok, text: str) -> list[str]:
    """The text as the tokenizer's normalizer and pre-tokenizer hand it to its BPE model (spaces as `▁`)."""
    backend = tok.backend_tokenizer
    text = backend.normalizer.normalize_str(text) if backend.normalizer else text
    return [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]


@pytest.mark.parametrize("case", CASES)
def test_scores_reproduce_the_tokenizer_under_llama_cpp_merging(case, exported):
    """The scores are all llama.cpp has to go on: merging by them must give the tokenizer's own ids.

    llama.cpp marks the text itself (spaces -> `▁`, one `▁` in front when add_space_prefix); that
    is what the tokenizer does too, except on text that starts with a space, where Metaspace
    adds no second `▁` and SentencePiece and llama.cpp do (docs/export.md says so).
    """
    _, tok, path = exported[case]
    f = fields(path)
    for text in TEXTS:
        pieces = marked(tok, text)
        if not text.startswith(" "):
            assert "".join(pieces) == "\u2581" * f["tokenizer.ggml.add_space_prefix"] + text.replace(" ", "\u2581")
        got = [i for piece in pieces for i in llama_cpp_spm(piece, f["tokenizer.ggml.tokens"],
                                                            f["tokenizer.ggml.scores"])]
        assert got == tok(text, add_special_tokens=False)["input_ids"], (text, tok.tokenize(text))

@pytest.mark.parametrize("case", ["llama-spm-model", "gemma2-spm-model"])
def test_file_tokenizes_as_sentencepiece_itself_under_llama_cpp_merging(case, exported, spm_files):
    """Against the SentencePiece library (the tokenizer.model's own encoder), text starting with a space included."""
    import sentencepiece as spm

    _, _, path = exported[case]
    f = fields(path)
    prefix = f["tokenizer.ggml.add_space_prefix"]
    sp = spm.SentencePieceProcessor(model_file=str(spm_files["prefix" if prefix else "no-prefix"]))
    for text in TEXTS:
        marked_text = "\u2581" * prefix + text.replace(" ", "\u2581")
        assert llama_cpp_spm(marked_text, f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"]) == sp.encode(text)


def test_tokenizer_model_of_another_vocabulary_is_ignored(tokenizers, spm_files, tmp_path):
    """A tokenizer.model whose pieces are not the tokenizer's, or that does not parse, says nothing about it:
    the scores then come from tokenizer.json."""
    tok = tokenizers["llama-spm-model"]
    want = tokenizer_vocab(tokenizers["mistral-spm-json"], VOCAB)
    assert tokenizer_vocab(tok, VOCAB).source == "tokenizer.model"
    broken = tmp_path / "tokenizer.model"
    broken.write_bytes(b"not a sentencepiece model")
    try:
        for other in (spm_files["no-prefix"], broken):
            tok.vocab_file = tok.init_kwargs["vocab_file"] = str(other)
            got = tokenizer_vocab(tok, VOCAB)
            assert got.source == "tokenizer.json" and got.scores == want.scores
    finally:
        tok.vocab_file = tok.init_kwargs["vocab_file"] = str(spm_files["prefix"])


def test_unsupported_tokenizer_kind_names_the_supported_ones(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("\u2581a", -1.0), ("a", -2.0)], unk_id=0))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="<unk>")
    with pytest.raises(ExportError, match=r"does not write this tokenizer \(Unigram.*It writes: gpt2: byte-level BPE"
                                          r".*llama: SentencePiece-style BPE with byte_fallback"):
        export(family_model("llama", vocab=VOCAB), tok, None, "gguf", tmp_path / "u.gguf")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not os.environ.get(TOOL_ENV), reason=f"{TOOL_ENV} not set (llama.cpp's own reading of the file)")
@pytest.mark.parametrize("case", CASES)
def test_llama_cpp_itself_tokenizes_and_computes_like_the_source(case, exported):
    """The file read by llama.cpp (tests/export/llama_cpp.py): its tokenizer gives the source tokenizer's ids and its
    forward pass the source model's logits. Text starting with a space is left out: Hugging Face's Metaspace adds no
    second `▁` there, SentencePiece and llama.cpp do (docs/export.md)."""
    model, tok, path = exported[case]
    ids = torch.randint(3, VOCAB, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    logits, _ = run_tool(Path(os.environ[TOOL_ENV]), path, "", ids)
    max_abs, rel = compare(reference, logits)
    assert max_abs <= 3e-3 and rel <= 2e-3, (case, max_abs, rel)
    for text in [t for t in TEXTS if not t.startswith(" ")]:
        _, tokens = run_tool(Path(os.environ[TOOL_ENV]), path, text, ids[:1])
        assert tokens == tok(text, add_special_tokens=False)["input_ids"], (case, text)
    # After a special token llama.cpp starts a new SentencePiece "sentence" (space prefix again, as SentencePiece
    # itself does); Hugging Face's Metaspace (prepend_scheme "first") does not. So a chat prompt is each piece
    # between special tokens tokenized on its own.
    _, tokens = run_tool(Path(os.environ[TOOL_ENV]), path, CHAT, ids[:1])
    want = []
    for piece in re.split(r"(<\|im_start\|>|<\|im_end\|>)", CHAT):
        if piece in CHAT_TOKENS:
            want.append(tok.convert_tokens_to_ids(piece))
        elif piece:
            want += tok(piece, add_special_tokens=False)["input_ids"]
    assert tokens == want, case
