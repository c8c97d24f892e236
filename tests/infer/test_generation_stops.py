"""Generation with a run's template: where answers stop, and the answer-only repetition penalty of chat.

References are written out independently: a hand greedy loop over the model's logits, and the token ids the
template's end marker has in the vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from tunelab.data.formats import Conversation
from tunelab.data.templates import IGNORE_INDEX, NAMED_TEMPLATES, prompt_ids, tokenize_conversation
from tunelab.infer.generate import (
    CHAT_REPETITION_PENALTY,
    AnswerRepetitionPenalty,
    generate,
    generate_answers,
    stream_chat,
)

CHATML = NAMED_TEMPLATES["chatml"]
ASK = [[{"role": "user", "content": "Say something long about the sea."}]]


def _hand_greedy(model, ids: list[int], steps: int, penalty: float = 1.0) -> list[int]:
    """Greedy decoding written out: CTRL's penalty on the tokens generated so far (never the prompt's)."""
    seq, out = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].clone()  # (V,)
            for t in set(out):
                logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
            nxt = int(logits.argmax())
            seq.append(nxt)
            out.append(nxt)
    return out


def test_answer_stops_at_the_models_eos_and_says_it_ended(tiny_llama, tiny_tokenizer) -> None:
    # a strong penalty: the random tiny model otherwise repeats one token, and we need a token that is new at step k
    plain = generate_answers(tiny_llama, tiny_tokenizer, CHATML, ASK, max_new_tokens=8, repetition_penalty=3.0)[0]
    assert not plain.ended and plain.n_tokens == 8  # the random tiny model never says <|im_end|>
    ids = prompt_ids(tiny_tokenizer, CHATML, ASK[0])
    row = _hand_greedy(tiny_llama, ids, 8, penalty=3.0)
    assert plain.text == tiny_tokenizer.decode(row, skip_special_tokens=True).strip()
    k = next(i for i in range(1, 8) if row[i] not in row[:i])  # a token first produced at step k
    tiny_llama.generation_config.eos_token_id = row[k]  # the model's own EOS (generation_config), not the template's
    stopped = generate_answers(tiny_llama, tiny_tokenizer, CHATML, ASK, max_new_tokens=8, repetition_penalty=3.0)[0]
    assert stopped.ended and stopped.n_tokens == k
    assert stopped.text == tiny_tokenizer.decode(row[:k], skip_special_tokens=True).strip()


def test_answer_stops_at_the_templates_end_marker(tiny_llama, tiny_tokenizer) -> None:
    im_end = tiny_tokenizer.get_vocab()["<|im_end|>"]
    tiny_llama.generation_config.eos_token_id = None  # only the template (and tokenizer) name the end
    head = torch.nn.Parameter(tiny_llama.lm_head.weight.detach().clone())
    tiny_llama.lm_head.weight = head  # untie from the input embeddings, so the prompt's states do not change
    ids = prompt_ids(tiny_tokenizer, CHATML, ASK[0])
    with torch.no_grad():  # point <|im_end|>'s output row at the last prompt state: it becomes the next token
        h = tiny_llama(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]  # (H,)
        head[im_end] = h / h.norm() * 1e3
        assert int(tiny_llama(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) == im_end
    answers = generate_answers(tiny_llama, tiny_tokenizer, CHATML, ASK * 2, max_new_tokens=8)
    assert all(a.ended and a.n_tokens == 0 and a.text == "" for a in answers)


def test_the_trained_labels_end_with_the_templates_end_token(tiny_tokenizer) -> None:
    conv = Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}])
    s = tokenize_conversation(tiny_tokenizer, CHATML, conv, 64)
    trained = [t for t, label in zip(s.input_ids, s.labels) if label != IGNORE_INDEX]
    assert tiny_tokenizer.get_vocab()["<|im_end|>"] in trained[-2:]  # "<|im_end|>" then "\n" close the answer


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_repetition_penalty_counts_only_the_answer(tiny_llama, tiny_tokenizer, penalty: float) -> None:
    msgs = [[{"role": "user", "content": "the the the the sea sea sea"}]]
    ids = prompt_ids(tiny_tokenizer, CHATML, msgs[0])
    want = _hand_greedy(tiny_llama, ids, 12, penalty)
    got = generate_answers(tiny_llama, tiny_tokenizer, CHATML, msgs, max_new_tokens=12, repetition_penalty=penalty)
    assert got[0].text == tiny_tokenizer.decode(want, skip_special_tokens=True).strip()


def test_penalty_processor_on_hand_values() -> None:
    proc = AnswerRepetitionPenalty(2.0, start=2)
    ids = torch.tensor([[5, 1, 1, 3]])  # prompt [5, 1], answer [1, 3]
    scores = torch.tensor([[4.0, 4.0, 4.0, -4.0, 4.0, 4.0]])
    # tokens 1 and 3 are in the answer: 4 -> 2 and -4 -> -8; token 5 is only in the prompt: unchanged
    assert proc(ids, scores).tolist() == [[4.0, 2.0, 4.0, -8.0, 4.0, 4.0]]
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        AnswerRepetitionPenalty(0.0, 0)


def test_chat_streams_with_the_default_penalty_and_batch_generation_without(tiny_llama, tiny_tokenizer) -> None:
    streamed = "".join(stream_chat(tiny_llama, tiny_tokenizer, CHATML, ASK[0], max_new_tokens=16)).strip()
    chat_default = generate(tiny_llama, tiny_tokenizer, CHATML, ASK, 16, repetition_penalty=CHAT_REPETITION_PENALTY)
    assert streamed == chat_default[0]
    plain = generate(tiny_llama, tiny_tokenizer, CHATML, ASK, 16)  # eval and batch prediction: no penalty
    ids = prompt_ids(tiny_tokenizer, CHATML, ASK[0])
    assert plain[0] == tiny_tokenizer.decode(_hand_greedy(tiny_llama, ids, 16), skip_special_tokens=True).strip()
