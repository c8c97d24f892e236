"""A run is a folder: `Run(path)` reads what training wrote and rebuilds the trained model exactly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.config import RunCfg
from tunelab.runfolder import RunFolder, RunNotFound

__all__ = ["Exported", "Run", "RunNotFound", "add_run_info", "format_label"]

FULL_WEIGHT_METHODS = ("full", "freeze")
"""Methods whose run stores the whole model: exporting writes those weights, nothing is merged."""


@dataclass(frozen=True)
class Exported:
    """What `Run.export_described` wrote: the main path, the format asked for, whether the trained
    part is folded into the weights, and a one-line label saying so (the CLI prints it)."""

    path: Path
    fmt: str
    merged: bool
    label: str


def format_label(fmt: str, options: dict) -> str:
    """A short name for an export format with its options, e.g. "GGUF q4_k_m", "ONNX graph with KV cache"."""
    if fmt in ("merged", "safetensors"):
        return "safetensors model"
    if fmt == "gguf":
        return f"GGUF {str(options.get('quant') or 'f16').lower()}"
    if fmt == "ollama":
        return f"Ollama model (GGUF {str(options.get('quant') or 'q8_0').lower()} + Modelfile)"
    if fmt == "onnx":
        return "ONNX graph " + ("with KV cache" if options.get("with_past", True) else "without KV cache")
    if fmt == "triton":
        return "Triton repository (ONNX graph " + ("with KV cache)" if options.get("with_past") else "without KV cache)")
    return fmt


class Run:
    """A trained run folder: config, template, tokenizer, weights, metrics and summary.

    The files themselves are read through `self.folder` (tunelab.runfolder.RunFolder); Run adds what
    needs the model code: loading, chatting, evaluating and exporting.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.folder = RunFolder(self.path).require_config()
        self.config: RunCfg = self.folder.read_config()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def chat_template(self) -> str:
        """The exact template training used."""
        return self.folder.read_template()

    @property
    def summary(self) -> dict:
        return self.folder.read_summary() or {}

    @property
    def info(self) -> dict:
        return self.folder.read_info() or {}

    @property
    def base_model_name(self) -> str:
        """The model this run trained on top of: model.name, or, for a run-based model named relative to
        another working folder, the absolute run path kept in run.json's base_chain."""
        return self.folder.base_name(self.config.model.name)

    def metrics(self) -> list[dict]:
        """Every line of metrics.jsonl."""
        return self.folder.read_metrics()

    def weights_dir(self) -> Path:
        """The trained part's folder (adapter/ or model/), or RunNotFound when training has not finished."""
        d = self.folder.weights_path(self.config.method.name)
        if not d.is_dir():
            raise RunNotFound(f"{self.path}: no trained weights ({d.name}/ is missing); did training finish? "
                              f"Continue it with `tunelab train {self.folder.config_path} train.resume=auto`")
        return d

    def load_tokenizer(self):
        """The tokenizer the run trained with."""
        return self.folder.load_tokenizer()

    @property
    def is_vision(self) -> bool:
        """Whether the run trained a vision-language model (chat, eval and serve then take images)."""
        return self.folder.is_vision()

    def load_processor(self):
        """A vision run's processor (image settings + tokenizer), as it trained with."""
        from tunelab.models.vision import load_processor

        return load_processor(self.folder.tokenizer_dir)

    def load_model(self, device: str = "auto", merged: bool = False):
        """(model, tokenizer, chat_template) as trained; `merged` folds adapters into the weights."""
        from tunelab.bases import load_model
        from tunelab.methods import get_method
        from tunelab.models import pick_device

        method = get_method(self.config.method.name)
        dev = pick_device(device)
        base = load_model(self.base_model_name, self.config.model.dtype, dev, self.config.model.trust_remote_code)
        model = method.load_for_inference(base, self.weights_dir())
        if merged:
            model = method.merge(model)
        model.eval()
        return model, self.load_tokenizer(), self.chat_template

    def chat(self, prompt: str, max_new_tokens: int = 128, images: list | None = None, **kw) -> str:
        """One answer to one user message, with the run's template; `images` (paths or PIL images) go before the
        prompt for a vision run."""
        from tunelab.infer.generate import generate

        model, tok, tpl = self.load_model()
        if self.is_vision:
            from tunelab.data.images import IMAGE_TOKEN
            from tunelab.infer.vision import generate_vision, open_image_file

            pics = [open_image_file(i) if isinstance(i, (str, Path)) else i for i in images or []]
            msgs = [{"role": "user", "content": IMAGE_TOKEN * len(pics) + prompt}]
            return generate_vision(model, self.load_processor(), tpl, [(msgs, pics)], max_new_tokens, **kw)[0].text
        if images:
            raise ValueError(f"{self.path}: a text-only run; it cannot read images")
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
        `export_described` returns the same path with a sentence saying which of these happened.
        """
        return self.export_described(fmt, out, **options).path

    def export_described(self, fmt: str, out: str | Path | None = None, **options) -> Exported:
        """`export`, returning the path together with an honest label of what was written.

        The label names the format (with its quant type) and how the trained part got there:
        merged into the base weights, the run's own full weights, or, for a method that cannot
        merge, NOT merged: the base model and the adapter side by side (whose default folder is
        then RUN/export/bundle, not .../merged).
        """
        from tunelab.export import check_export
        from tunelab.export import export as do_export
        from tunelab.bases import load_model
        from tunelab.methods import NotMergeable, get_method

        check_export(fmt, options)  # a wrong format or option fails before the model is loaded
        method = self.config.method.name
        if self.is_vision:  # a HF folder with the processor, loadable by AutoModelForImageTextToText/AutoProcessor
            from tunelab.export.base import ExportError

            if fmt not in ("merged", "safetensors"):
                raise ExportError(f"--format {fmt}: a vision run exports as merged (a Hugging Face folder with its "
                                  "processor); GGUF/ONNX/Ollama/Triton exports are for text models")
            model, _, template = self.load_model(device="cpu", merged=True)
            target = Path(out) if out else self.folder.export_dir(fmt)
            path = do_export(model, self.load_processor(), template, fmt, target, **options)
            how = "the run's own full weights" if method in FULL_WEIGHT_METHODS else f"{method} adapter merged"
            return Exported(path, fmt, merged=True, label=f"{format_label(fmt, options)} with its processor ({how})")
        try:
            model, tok, template = self.load_model(device="cpu", merged=True)
        except NotMergeable as e:
            if fmt not in ("merged", "safetensors"):
                raise NotMergeable(f"{e} Export with --format merged to get the base model and the adapter side "
                                   "by side (servable with `tunelab serve`).") from None
            target = Path(out) if out else self.folder.export_dir("bundle")
            path = self._export_bundle(target, str(e), load_model, get_method, do_export)
            return Exported(path, fmt, merged=False,
                            label=f"base model + {method} adapter side by side, NOT merged ({method} cannot be "
                                  "folded into the weights; see README.md in the folder)")
        target = Path(out) if out else self.folder.export_dir(fmt)
        path = do_export(model, tok, template, fmt, target, **options)
        how = "the run's own full weights" if method in FULL_WEIGHT_METHODS else f"{method} adapter merged into the base"
        return Exported(path, fmt, merged=True, label=f"{format_label(fmt, options)} ({how})")

    def _export_bundle(self, target: Path, why: str, load_model, get_method, do_export) -> Path:
        import shutil

        from tunelab.runfolder import ADAPTER_DIR
        from tunelab.utils.io import atomic_dir

        base = load_model(self.base_model_name, self.config.model.dtype, "cpu", self.config.model.trust_remote_code)
        tok, template = self.load_tokenizer(), self.chat_template
        with atomic_dir(target) as tmp:
            do_export(base, tok, template, "merged", tmp / "base")
            shutil.copytree(self.weights_dir(), tmp / ADAPTER_DIR)
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

    if fields and distributed.current().is_main:
        RunFolder(run_dir).update_info(fields)
