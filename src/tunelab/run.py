"""A run is a folder: `Run(path)` reads what training wrote and rebuilds the trained model exactly."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab.config import RunCfg, build_config


class RunNotFound(ValueError):
    """The path is not a complete tunelab run folder; the message says what is missing."""


class Run:
    """A trained run folder: config, template, tokenizer, weights, metrics and summary."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.yaml").is_file():
            raise RunNotFound(f"{self.path}: not a tunelab run folder (no config.yaml); "
                              "pass the output_dir of a `tunelab train` run")
        self.config: RunCfg = build_config(yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8")),
                                           str(self.path / "config.yaml"))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def chat_template(self) -> str:
        """The exact template training used."""
        return (self.path / "chat_template.jinja").read_text(encoding="utf-8")

    @property
    def summary(self) -> dict:
        p = self.path / "summary.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    @property
    def info(self) -> dict:
        p = self.path / "run.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    def metrics(self) -> list[dict]:
        """Every line of metrics.jsonl."""
        p = self.path / "metrics.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]

    def weights_dir(self) -> Path:
        from tunelab.methods import get_method

        d = self.path / get_method(self.config.method.name).WEIGHTS_DIR
        if not d.is_dir():
            raise RunNotFound(f"{self.path}: no trained weights ({d.name}/ is missing); did training finish? "
                              f"Continue it with `tunelab train {self.path}/config.yaml train.resume=auto`")
        return d

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def load_model(self, device: str = "auto", merged: bool = False):
        """(model, tokenizer, chat_template) as trained; `merged` folds adapters into the weights."""
        from tunelab.methods import get_method
        from tunelab.models import load_model, pick_device

        method = get_method(self.config.method.name)
        dev = pick_device(device)
        base = load_model(self.config.model.name, self.config.model.dtype, dev, self.config.model.trust_remote_code)
        model = method.load_for_inference(base, self.weights_dir())
        if merged:
            model = method.merge(model)
        model.eval()
        return model, self.load_tokenizer(), self.chat_template

    def chat(self, prompt: str, max_new_tokens: int = 128, **kw) -> str:
        """One answer to one user message, with the run's template."""
        from tunelab.infer.generate import generate

        model, tok, tpl = self.load_model()
        return generate(model, tok, tpl, [[{"role": "user", "content": prompt}]], max_new_tokens, **kw)[0]

    def evaluate(self, data: str, **kw) -> dict:
        """Loss, perplexity and generation metrics on a data file; saved under eval/ in the run."""
        from tunelab.eval.evaluate import evaluate_run

        return evaluate_run(self, data, **kw)
