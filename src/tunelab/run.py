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

    @property
    def base_model_name(self) -> str:
        """The model this run trained on top of: model.name, or, for a run-based model named relative to
        another working folder, the absolute run path kept in run.json's base_chain."""
        from tunelab.models.loader import run_base_name

        return run_base_name(self.path, self.config.model.name)

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
        base = load_model(self.base_model_name, self.config.model.dtype, dev, self.config.model.trust_remote_code)
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

    def evaluate(self, data: str | list[str] | None, **kw) -> dict:
        """Loss, perplexity and generation metrics on a data file (or one file per task: `task=path` items,
        metrics per task); saved under eval/ in the run."""
        from tunelab.eval.evaluate import evaluate_run

        return evaluate_run(self, data, **kw)

    def export(self, fmt: str, out: str | Path | None = None, **options) -> Path:
        """Write the run as `fmt` (merged, gguf, ollama, onnx, triton) under `out` (default RUN/export/FMT).

        Adapters are merged first. A run whose method cannot merge (prefix/prompt tuning,
        bottleneck adapters) exports as `merged` to a bundle: the base model plus the adapter
        folder and a README saying how to load them; other formats then raise NotMergeable.
        """
        from tunelab.export import check_export
        from tunelab.export import export as do_export
        from tunelab.methods import NotMergeable, get_method
        from tunelab.models import load_model

        check_export(fmt, options)  # a wrong format or option fails before the model is loaded
        target = Path(out) if out else self.path / "export" / fmt
        try:
            model, tok, template = self.load_model(device="cpu", merged=True)
        except NotMergeable as e:
            if fmt not in ("merged", "safetensors"):
                raise NotMergeable(f"{e} Export with --format merged to get the base model and the adapter side "
                                   "by side (servable with `tunelab serve`).") from None
            return self._export_bundle(target, str(e), load_model, get_method, do_export)
        return do_export(model, tok, template, fmt, target, **options)

    def _export_bundle(self, target: Path, why: str, load_model, get_method, do_export) -> Path:
        import shutil

        from tunelab.utils.io import atomic_dir

        base = load_model(self.base_model_name, self.config.model.dtype, "cpu", self.config.model.trust_remote_code)
        tok, template = self.load_tokenizer(), self.chat_template
        with atomic_dir(target) as tmp:
            do_export(base, tok, template, "merged", tmp / "base")
            shutil.copytree(self.weights_dir(), tmp / "adapter")
            (tmp / "README.md").write_text(
                f"# {self.path.name}: base model + {self.config.method.name} adapter\n\n{why}\n\n"
                "- `base/` is the base model (safetensors, tokenizer, chat_template.jinja).\n"
                "- `adapter/` is the trained part as the run stored it.\n\n"
                "Serve both with tunelab: `tunelab serve RUN_FOLDER`. For PEFT methods (prefix, prompt, p-tuning):\n\n"
                "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
                "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('base'), 'adapter')\n```\n",
                encoding="utf-8")
        return target


def add_run_info(run_dir: str | Path, fields: dict) -> None:
    """Add `fields` to a run's run.json (written by the first process only), e.g. its tasks or base chain."""
    from tunelab.engine import distributed
    from tunelab.utils.io import atomic_write_json

    path = Path(run_dir) / "run.json"
    if not fields or not distributed.current().is_main or not path.is_file():
        return
    atomic_write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **fields})
