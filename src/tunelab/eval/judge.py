"""LLM-as-a-judge scoring and reference-LM fluency for `tunelab eval --judge / --fluency-lm`.

Two judge protocols (Zheng et al., 2023, "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena"):

- **pairwise**: the judge sees a question and two answers and says which is better (or a tie).
  Judges prefer whichever answer comes first (or second) more often than its quality explains,
  so every pair is asked twice with the answers swapped; a system wins a question only when it
  wins in both orders, anything else is a tie. The share of questions where both orders agree
  (`consistency`) and the share of verdicts that chose the first position (`first_position_rate`)
  say how much the judge can be trusted.
- **rubric**: the judge grades one answer from 1 to 5 against the question (and the reference
  answer when there is one).

A judge is either a local model (a run folder or a model name/path, scored offline) or an
OpenAI-compatible endpoint (`tunelab serve`, vLLM, llama.cpp's server...). A local judge does not
sample: each allowed verdict ("1", "2", "0" / "1".."5") is scored by its log-likelihood after the
prompt and the likeliest wins, so the verdict is always valid and deterministic. An endpoint is
asked at temperature 0 and its reply is parsed; an unparseable reply counts as `invalid` (and as
a tie for pairwise, as no score for the rubric).

`human_agreement` runs the judge on a rated human-eval sheet (`tunelab eval --human-sheet`, filled
in by raters) and reports how often the judge agrees with the raters, with Cohen's kappa.

`fluency_perplexity` is the perplexity of answers as plain text under a reference LM: a fluency
score that needs no reference answer (lower is more fluent; it also rewards bland text, so read
it beside the task metrics).
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

PAIRWISE_OPTIONS = ("1", "2", "0")  # answer 1 better, answer 2 better, tie
RUBRIC_OPTIONS = ("1", "2", "3", "4", "5")

PAIRWISE_PROMPT = """You are a strict judge of answer quality. Read the question and two answers.
Decide which answer is more helpful, correct and relevant. Ignore the order of the answers and their length.

[Question]
{question}

[Answer 1]
{first}

[Answer 2]
{second}

Reply with one character: 1 if Answer 1 is better, 2 if Answer 2 is better, 0 if they are equally good."""

RUBRIC_PROMPT = """You are a strict judge of answer quality. Grade the answer to the question on a scale of 1 to 5:
5 = correct, complete and clear; 4 = correct with small flaws; 3 = partly correct; 2 = mostly wrong or off-topic;
1 = wrong, empty or unreadable.

[Question]
{question}
{reference}
[Answer]
{answer}

Reply with one digit from 1 to 5."""


class JudgeError(ValueError):
    """A judge that cannot be used (unreachable endpoint, unknown model); the message says what to fix."""


class Judge(Protocol):
    """Something that picks one of a few short options in reply to a chat prompt."""

    name: str

    def choose(self, prompts: Sequence[list[dict]], options: Sequence[str]) -> list[str | None]:
        """For each prompt, one of `options`, or None when the reply named none of them."""
        ...


class LocalJudge:
    """A loaded model as judge: each option is scored by log p(option | prompt) and the likeliest is chosen."""

    def __init__(self, model, tokenizer, template: str, name: str, batch_size: int = 8, max_length: int = 2048):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.name, self.batch_size, self.max_length = name, batch_size, max_length

    def choose(self, prompts: Sequence[list[dict]], options: Sequence[str]) -> list[str | None]:
        from tunelab.eval.loglik import option_logprobs

        scores = option_logprobs(self.model, self.tokenizer, self.template, prompts, [list(options)] * len(prompts),
                                 self.batch_size, self.max_length)
        return [options[max(range(len(options)), key=lambda k: row[k][0])] for row in scores]


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The first of `options` that appears in `text` as a word of its own ("Answer 2." -> "2"), else None."""
    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, options)) + r")(?![\w])")
    found = pattern.search(text)
    return found.group(1) if found else None


class EndpointJudge:
    """An OpenAI-compatible chat endpoint as judge (temperature 0, a few tokens); replies are parsed."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, client=None,
                 timeout_s: float = 120.0, max_tokens: int = 8):
        import httpx

        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=timeout_s)
        self.max_tokens = max_tokens
        self.model = model or self._first_model()
        self.name = f"{self.url}#{self.model}"

    def _post_or_get(self, method: str, path: str, **kw):
        import httpx

        try:
            resp = self.client.request(method, self.url + path, headers=self.headers, **kw)
        except httpx.HTTPError as e:
            raise JudgeError(f"judge endpoint {self.url}{path} is unreachable ({e}); start it (e.g. "
                             "`tunelab serve RUN`) or check --judge") from None
        if resp.status_code != 200:
            hint = " (set --judge-api-key or TUNELAB_JUDGE_API_KEY)" if resp.status_code in (401, 403) else ""
            raise JudgeError(f"judge endpoint {self.url}{path} answered HTTP {resp.status_code}{hint}: "
                             f"{resp.text[:300]}")
        return resp.json()

    def _first_model(self) -> str:
        data = self._post_or_get("GET", "/v1/models").get("data") or []
        if not data:
            raise JudgeError(f"judge endpoint {self.url}/v1/models lists no model; pass --judge-model NAME")
        return str(data[0]["id"])

    def reply(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}
        out = self._post_or_get("POST", "/v1/chat/completions", json=body)
        try:
            return str(out["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.url}: reply is not a chat completion: {str(out)[:300]}") from None

    def choose(self, prompts: Sequence[list[dict]], options: Sequence[str]) -> list[str | None]:
        return [parse_choice(self.reply(p), options) for p in prompts]


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def load_local(spec: str, device: str = "auto") -> tuple[Any, Any, str]:
    """(model, tokenizer, template) of a run folder (its trained model and template) or a model name/path
    (its tokenizer's own chat template, chatml when it has none)."""
    from tunelab.data.templates import resolve_template
    from tunelab.models import load_model, pick_device
    from tunelab.models.loader import ModelNotFound, load_tokenizer
    from tunelab.runfolder import RunFolder

    if (Path(spec) / "config.yaml").is_file() and RunFolder(spec).has_weights():
        from tunelab.bases import load_model as load_run  # a run, merged into its base (eval does not import run.py)

        folder = RunFolder(spec)
        model = load_run(spec, "auto", pick_device(device))
        model.eval()
        return model, folder.load_tokenizer(), folder.read_template()
    try:
        model = load_model(spec, "auto", pick_device(device))
        tok = load_tokenizer(spec)
    except ModelNotFound as e:
        raise JudgeError(f"judge/fluency model {spec!r}: {e}") from None
    model.eval()
    return model, tok, resolve_template(tok, None)


def load_judge(spec: str, *, model: str | None = None, api_key: str | None = None, device: str = "auto",
               batch_size: int = 8, max_length: int = 2048, client=None) -> Judge:
    """A judge from `spec`: an http(s) URL of an OpenAI-compatible server, or a run folder / model name."""
    if is_url(spec):
        return EndpointJudge(spec, model=model, api_key=api_key, client=client)
    if model:
        raise JudgeError(f"--judge-model names a model on an endpoint; {spec!r} is a local model, so leave it out")
    m, tok, template = load_local(spec, device)
    return LocalJudge(m, tok, template, name=spec, batch_size=batch_size, max_length=max_length)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@dataclass
class PairwiseResult:
    """Position-swapped pairwise verdicts of system A against system B."""

    wins: int = 0
    losses: int = 0
    ties: int = 0
    consistent: int = 0
    first_position: int = 0  # verdicts (of the 2n asked) that chose the answer shown first
    decisive: int = 0  # verdicts that chose an answer (not a tie, not invalid)
    invalid: int = 0
    verdicts: list[str] = field(default_factory=list)  # per question: "a", "b" or "tie"

    @property
    def n(self) -> int:
        return len(self.verdicts)

    def summary(self) -> dict[str, float | int]:
        """win_rate counts a tie as half a win (the human sheet's rule); rates are fractions."""
        n = max(self.n, 1)
        return {"judge_win_rate": (self.wins + 0.5 * self.ties) / n, "judge_wins": self.wins,
                "judge_losses": self.losses, "judge_ties": self.ties, "judge_consistency": self.consistent / n,
                "judge_first_position_rate": self.first_position / self.decisive if self.decisive else float("nan"),
                "judge_invalid": self.invalid}


def _winner(choice: str | None, first: str, second: str) -> str:
    return {"1": first, "2": second}.get(choice or "", "tie")


def pairwise(judge: Judge, questions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]
             ) -> PairwiseResult:
    """Judge A against B on each question twice, A shown first then B shown first.

    A question is won only when both orders pick the same answer; a split or a tie is a tie.
    """
    if not (len(questions) == len(answers_a) == len(answers_b)):
        raise ValueError(f"pairwise judging needs one answer of each system per question; got {len(questions)} "
                         f"questions, {len(answers_a)} and {len(answers_b)} answers")
    ab = [_user(PAIRWISE_PROMPT.format(question=q, first=a, second=b))
          for q, a, b in zip(questions, answers_a, answers_b)]
    ba = [_user(PAIRWISE_PROMPT.format(question=q, first=b, second=a))
          for q, a, b in zip(questions, answers_a, answers_b)]
    choices = judge.choose(ab + ba, PAIRWISE_OPTIONS)
    res = PairwiseResult()
    n = len(questions)
    for c1, c2 in zip(choices[:n], choices[n:]):
        for c in (c1, c2):
            res.invalid += c is None
            res.decisive += c in ("1", "2")
            res.first_position += c == "1"
        w1, w2 = _winner(c1, "a", "b"), _winner(c2, "b", "a")
        res.consistent += w1 == w2
        verdict = w1 if w1 == w2 else "tie"
        res.verdicts.append(verdict)
        res.wins += verdict == "a"
        res.losses += verdict == "b"
        res.ties += verdict == "tie"
    return res


def rubric(judge: Judge, questions: Sequence[str], answers: Sequence[str],
           references: Sequence[str] | None = None) -> list[int | None]:
    """A 1-5 grade per answer (None where an endpoint's reply held no digit)."""
    refs = references if references is not None else [""] * len(questions)
    prompts = [_user(RUBRIC_PROMPT.format(question=q, answer=a,
                                          reference=f"\n[Reference answer]\n{r}\n" if r else ""))
               for q, a, r in zip(questions, answers, refs)]
    return [int(c) if c else None for c in judge.choose(prompts, RUBRIC_OPTIONS)]


def rubric_summary(grades: Sequence[int | None]) -> dict[str, float | int]:
    """judge_rubric: the mean grade (1-5) over the valid grades; judge_rubric_invalid: the rest."""
    valid = [g for g in grades if g is not None]
    return {"judge_rubric": sum(valid) / len(valid) if valid else float("nan"),
            "judge_rubric_invalid": len(grades) - len(valid)}


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels (Cohen, 1960): agreement corrected for chance; 1 = perfect, 0 = chance."""
    if len(a) != len(b) or not a:
        raise ValueError("kappa needs two equally long, non-empty label lists")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    labels = set(a) | set(b)
    expected = sum((list(a).count(k) / n) * (list(b).count(k) / n) for k in labels)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def human_agreement(judge: Judge, sheet: str | Path, key_file: str | Path | None = None) -> dict[str, Any]:
    """How often the judge's position-swapped verdicts match the raters' on a rated human-eval sheet.

    Verdicts are in the sheet's terms (answer_1, answer_2 or tie). Returns {"n", "agreement" (fraction
    of rows with the same verdict), "kappa" (Cohen's), "agreement_decisive" (agreement on the rows the
    raters did not call a tie), "per_row": [{"id", "human", "judge"}]}.
    """
    from tunelab.eval.human import rated_rows

    rows = rated_rows(sheet, key_file)
    res = pairwise(judge, [r["prompt"] for r in rows], [r["answer_1"] for r in rows], [r["answer_2"] for r in rows])
    to_sheet = {"a": "1", "b": "2", "tie": "tie"}
    judged = [to_sheet[v] for v in res.verdicts]
    human = [r["better"] for r in rows]
    decisive = [(h, j) for h, j in zip(human, judged) if h != "tie"]
    return {"n": len(rows), "agreement": sum(h == j for h, j in zip(human, judged)) / len(rows),
            "kappa": cohen_kappa(human, judged),
            "agreement_decisive": (sum(h == j for h, j in decisive) / len(decisive)) if decisive else float("nan"),
            "per_row": [{"id": r["id"], "human": h, "judge": j} for r, h, j in zip(rows, human, judged)]}


def start_token(tokenizer) -> int | None:
    """The token a plain text is scored after: BOS, else EOS (a document boundary, as GPT-2 uses it)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def text_nll(model, tokenizer, texts: Sequence[str], max_length: int = 1024) -> list[tuple[float, int]]:
    """(summed NLL in nats, scored tokens) of each text as plain text, one unpadded forward each.

    Each text is scored after `start_token`, so its first word counts too; an empty text scores (0, 0).
    """
    device = next(model.parameters()).device
    start = start_token(tokenizer)
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ([start] if start is not None else []) + ids
        ids = ids[:max_length]
        if len(ids) < 2:
            out.append((0.0, 0))
            continue
        x = torch.tensor([ids], device=device)
        logp = torch.log_softmax(model(input_ids=x, use_cache=False).logits[0, :-1].float(), dim=-1)  # (T-1, V)
        out.append((float(-logp.gather(1, x[0, 1:, None]).sum()), len(ids) - 1))
    return out


def fluency_perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 1024) -> tuple[float, list[float]]:
    """(corpus fluency perplexity, per-text perplexity) of answers under a reference LM.

    The corpus value is token-weighted: exp(sum of NLL / sum of tokens). Empty answers have no
    tokens to score and are skipped (per-text value nan; the corpus value is nan when all are empty).
    """
    nll = text_nll(model, tokenizer, texts, max_length)
    total, count = sum(s for s, _ in nll), sum(n for _, n in nll)
    per = [math.exp(min(s / n, 50)) if n else float("nan") for s, n in nll]
    return (math.exp(min(total / count, 50)) if count else float("nan")), per


def judge_eval(rows: Sequence[dict], other_rows: Sequence[dict] | None = None, *, judge: str | None = None,
               judge_model: str | None = None, judge_api_key: str | None = None,
               human_ratings: str | Path | None = None,
               fluency_lm: str | None = None, device: str = "auto", batch_size: int = 8, max_length: int = 2048,
               client=None) -> dict[str, Any]:
    """Judge and fluency scores of one system's answers (`rows`: prompt, reference, prediction), and of a
    second system's (`other_rows`, same questions) when it is given.

    Returns {"metrics": this system's scores, "other_metrics": the other's (or None), "rows": per-example
    extras of this system, "other_rows": the other's, "record": what the eval JSON keeps under "judge"}.
    The rubric grades each system alone; the pairwise verdict (this system = A) needs both.
    """
    if human_ratings and not judge:
        raise JudgeError("--human-ratings measures the judge against raters: also pass --judge MODEL_OR_URL")
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] | None = {} if other_rows is not None else None
    extra = [{} for _ in rows]
    other_extra = [{} for _ in other_rows] if other_rows is not None else None
    record: dict[str, Any] = {}
    questions = [r["prompt"] for r in rows]
    refs = [r.get("reference") or "" for r in rows]
    if judge:
        j = load_judge(judge, model=judge_model, api_key=judge_api_key, device=device, batch_size=batch_size,
                       max_length=max_length, client=client)
        record.update(judge=j.name, protocol="pairwise position-swapped + 1-5 rubric")
        grades = rubric(j, questions, [r["prediction"] for r in rows], refs)
        ours.update(rubric_summary(grades))
        for e, g in zip(extra, grades):
            e["judge_rubric"] = g
        if other_rows is not None:
            other_grades = rubric(j, questions, [r["prediction"] for r in other_rows], refs)
            theirs.update(rubric_summary(other_grades))
            for e, g in zip(other_extra, other_grades):
                e["judge_rubric"] = g
            res = pairwise(j, questions, [r["prediction"] for r in rows], [r["prediction"] for r in other_rows])
            ours.update(res.summary())
            for e, v in zip(extra, res.verdicts):
                e["judge_pairwise"] = {"a": "win", "b": "loss", "tie": "tie"}[v]
        if human_ratings:
            agreement = human_agreement(j, human_ratings)
            record["human_agreement"] = {k: v for k, v in agreement.items() if k != "per_row"}
            record["human_agreement"]["sheet"] = str(human_ratings)
            ours.update(judge_human_agreement=agreement["agreement"], judge_human_kappa=agreement["kappa"])
        del j
        gc.collect()
    if fluency_lm:
        model, tok, _ = load_local(fluency_lm, device)
        record["fluency_lm"] = fluency_lm
        ppl, per = fluency_perplexity(model, tok, [r["prediction"] for r in rows], max_length)
        ours["fluency_ppl"] = ppl
        for e, p in zip(extra, per):
            e["fluency_ppl"] = p
        if other_rows is not None:
            ppl, per = fluency_perplexity(model, tok, [r["prediction"] for r in other_rows], max_length)
            theirs["fluency_ppl"] = ppl
            for e, p in zip(other_extra, per):
                e["fluency_ppl"] = p
        del model
        gc.collect()
    return {"metrics": ours, "other_metrics": theirs, "rows": extra, "other_rows": other_extra, "record": record}
