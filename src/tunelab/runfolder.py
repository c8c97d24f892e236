"""A run is a folder; this module is the one place that knows its layout.

Every file `tunelab train` writes into `runs/<name>/` has its name here and is read or written
through `RunFolder`, so the layout is defined once:

    config.yaml            the resolved RunCfg (dump_config)            write_config / read_config
    run.json               base model, method, stage, parameter counts  write_info / read_info / update_info
    chat_template.jinja    the exact template training used             write_template / read_template
    tokenizer/             the tokenizer (with the template beside it)  write_tokenizer / load_tokenizer
    adapter/ or model/     the trained part (PEFT adapter / full)       weights_path(method)
    metrics.jsonl          one JSON object per logged step              read_metrics (the jsonl tracker appends)
    summary.json           what the loop did, plus data statistics      write_summary / read_summary
    checkpoints/step-N/    resumable checkpoints (engine/checkpoint.py) checkpoint_dir / checkpoint_dirs
    best/                  early stopping's scratch copy of the weights best_dir
    eval/<data>-<time>.json (+ .predictions.jsonl) evaluation results   eval_path / eval_results
    report.html            the HTML evidence report                     report_path
    ewc.safetensors        EWC's Fisher and reference weights           (engine/regularise.py)

Files some stages add (paths here, contents written by the stage): rejected.jsonl (data.skip_invalid),
completions.jsonl (grpo/ppo samples), selftrain_samples.jsonl + selftrain_data.jsonl (selftrain),
pseudo_labels.jsonl + selftrain_rounds.jsonl + rounds/round-R/ (pseudo-label rounds). Trackers keep
their own sub-folders (tensorboard, swanlab, mlflow) and overfitting.json.

It also answers "can this run be the base of another run?" (`RunFolder.as_base`): a finished
run whose stage writes text. It sits just above config/ and utils/ and imports nothing else from
tunelab, so every layer above can use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import RunCfg, build_config, dump_config
from tunelab.utils.io import atomic_dir, atomic_write_json, atomic_write_text, stamped_path

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_DIR = "tokenizer"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
BEST_DIR = "best"
EVAL_DIR = "eval"
PREDICTIONS_SUFFIX = ".predictions.jsonl"
REPORT_FILE = "report.html"
EXPORT_DIR = "export"
EWC_STATE_FILE = "ewc.safetensors"
REJECTED_FILE = "rejected.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
SELFTRAIN_SAMPLES_FILE = "selftrain_samples.jsonl"
SELFTRAIN_DATA_FILE = "selftrain_data.jsonl"
PSEUDO_LABELS_FILE = "pseudo_labels.jsonl"
SELFTRAIN_ROUNDS_FILE = "selftrain_rounds.jsonl"
ROUNDS_DIR = "rounds"

RUN_FILES = (CONFIG_FILE, RUN_INFO_FILE)
"""What every tunelab run folder holds from its first step; a folder with both is treated as a run."""
MARKERS = (CONFIG_FILE, RUN_INFO_FILE, METRICS_FILE, SUMMARY_FILE)
"""Any one of these makes a folder a (possibly unfinished or partial) run for reports and listings."""
WEIGHTS_DIRS = (ADAPTER_DIR, MODEL_DIR)
FULL_WEIGHT_METHODS = ("full", "freeze")
"""Methods that save every weight (under model/); the others save an adapter (under adapter/)."""
NOT_LANGUAGE_MODELS = ("classify", "reward")
"""Stages whose result scores text instead of writing it: not a base for another run."""


class RunNotFound(ValueError):
    """The path is not a complete tunelab run folder; the message says what is missing."""


class RunFileError(ValueError):
    """A file of a run folder is unreadable; the message names the file (and line)."""


def weights_dir_name(method: str) -> str:
    """The run sub-folder a method's trained part lives in: model/ for full weights, else adapter/."""
    return MODEL_DIR if method in FULL_WEIGHT_METHODS else ADAPTER_DIR


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file, None when absent; invalid JSON or a non-object raises RunFileError naming the file."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise RunFileError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every object of a .jsonl file ([] when absent); a bad line raises RunFileError naming file:line."""
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunFileError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                               "each line of a .jsonl file must be one JSON object") from None
        if not isinstance(obj, dict):
            raise RunFileError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    return rows


@dataclass(frozen=True)
class RunBase:
    """A finished run used as a base: its folder, its own base model name, method, stage and weights folder."""

    path: Path
    base_name: str
    method: str
    stage: str
    weights: Path


class RunFolder:
    """Typed access to the files of one run folder (the folder need not exist yet when writing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- paths -----------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def info_path(self) -> Path:
        return self.path / RUN_INFO_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def template_path(self) -> Path:
        return self.path / TEMPLATE_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def best_dir(self) -> Path:
        return self.path / BEST_DIR

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    def export_dir(self, fmt: str) -> Path:
        """Default target of `Run.export(fmt)`."""
        return self.path / EXPORT_DIR / fmt

    @property
    def rejected_path(self) -> Path:
        return self.path / REJECTED_FILE

    @property
    def completions_path(self) -> Path:
        return self.path / COMPLETIONS_FILE

    @property
    def selftrain_samples_path(self) -> Path:
        return self.path / SELFTRAIN_SAMPLES_FILE

    @property
    def selftrain_data_path(self) -> Path:
        return self.path / SELFTRAIN_DATA_FILE

    @property
    def pseudo_labels_path(self) -> Path:
        return self.path / PSEUDO_LABELS_FILE

    @property
    def selftrain_rounds_path(self) -> Path:
        return self.path / SELFTRAIN_ROUNDS_FILE

    def round_dir(self, r: int) -> Path:
        """rounds/round-R: one pseudo-label round's own checkpoints (its steps restart at 0)."""
        return self.path / ROUNDS_DIR / f"round-{r}"

    @property
    def ewc_state_path(self) -> Path:
        return self.path / EWC_STATE_FILE

    def weights_path(self, method: str) -> Path:
        """Where `method` keeps the trained part (it may not exist yet)."""
        return self.path / weights_dir_name(method)

    def checkpoint_dir(self, step: int) -> Path:
        """checkpoints/step-NNNNNN: zero-padded, so names sort by step."""
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:06d}"

    def checkpoint_dirs(self) -> list[Path]:
        """Every checkpoints/step-* folder, oldest first (complete or not: engine/checkpoint.py decides)."""
        root = self.checkpoints_dir
        return sorted(root.glob(f"{CHECKPOINT_PREFIX}*")) if root.is_dir() else []

    def eval_path(self, stem: str) -> Path:
        """A new eval/<stem>-<time>.json path (never overwriting an earlier result)."""
        return stamped_path(self.eval_dir, stem)

    # --- what the folder is ----------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether the folder is a tunelab run (config.yaml + run.json), rather than an HF model folder."""
        return all((self.path / f).is_file() for f in RUN_FILES) and not (self.path / "config.json").is_file()

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def has_marker(self) -> bool:
        """Whether any run file is there (a run that may be unfinished or partly copied)."""
        return any((self.path / m).is_file() for m in MARKERS)

    def is_finished(self) -> bool:
        return self.summary_path.is_file()

    def has_weights(self) -> bool:
        return any((self.path / d).is_dir() for d in WEIGHTS_DIRS)

    def require_config(self) -> RunFolder:
        """This folder, or RunNotFound when it holds no config.yaml (not a run)."""
        if not self.has_config():
            raise RunNotFound(f"{self.path}: not a tunelab run folder (no {CONFIG_FILE}); "
                              "pass the output_dir of a `tunelab train` run")
        return self

    # --- config.yaml -----------------------------------------------------------------------------------
    def write_config(self, cfg: RunCfg) -> Path:
        return atomic_write_text(self.config_path, dump_config(cfg))

    def read_config_dict(self) -> dict[str, Any] | None:
        """config.yaml as plain data (None when absent), for readers that must not fail on an old schema."""
        if not self.config_path.is_file():
            return None
        try:
            obj = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise RunFileError(f"{self.config_path}: not valid YAML ({e})") from None
        return obj if isinstance(obj, dict) else {}

    def read_config(self) -> RunCfg:
        """config.yaml validated as a RunCfg (ConfigError naming the file on a problem)."""
        self.require_config()
        return build_config(self.read_config_dict(), str(self.config_path))

    # --- run.json / summary.json / metrics.jsonl -------------------------------------------------------
    def write_info(self, meta: dict[str, Any]) -> Path:
        return atomic_write_json(self.info_path, meta)

    def read_info(self) -> dict[str, Any] | None:
        return read_json_object(self.info_path)

    def update_info(self, fields: dict[str, Any]) -> None:
        """Merge `fields` into an existing run.json (nothing when the file is not there yet)."""
        info = self.read_info()
        if info is not None and fields:
            self.write_info({**info, **fields})

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any] | None:
        return read_json_object(self.summary_path)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every line of metrics.jsonl ([] when absent)."""
        return read_jsonl(self.metrics_path)

    # --- template and tokenizer ------------------------------------------------------------------------
    def write_template(self, template: str) -> Path:
        return atomic_write_text(self.template_path, template)

    def read_template(self) -> str:
        """The exact chat template training used."""
        return self.template_path.read_text(encoding="utf-8")

    def write_tokenizer(self, tokenizer, template: str) -> None:
        """tokenizer/ (with the template beside it, so the folder loads on its own), atomically."""
        with atomic_dir(self.tokenizer_dir) as tmp:
            tokenizer.save_pretrained(tmp)
            (tmp / TEMPLATE_FILE).write_text(template, encoding="utf-8")

    def write_processor(self, processor, template: str) -> None:
        """tokenizer/ as a vision model's processor folder (image processor settings, tokenizer, template)."""
        with atomic_dir(self.tokenizer_dir) as tmp:
            processor.save_pretrained(tmp)
            (tmp / TEMPLATE_FILE).write_text(template, encoding="utf-8")

    def is_vision(self) -> bool:
        """Whether the run trained a vision-language model (its tokenizer/ holds a processor)."""
        return any((self.tokenizer_dir / n).is_file() for n in ("processor_config.json", "preprocessor_config.json"))

    def load_tokenizer(self):
        """The tokenizer the run trained with (pad = eos when it has no pad token)."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    # --- eval/ ---------------------------------------------------------------------------------------
    def eval_results(self) -> list[Path]:
        """eval/*.json result files, by name."""
        return sorted(self.eval_dir.glob("*.json")) if self.eval_dir.is_dir() else []

    @staticmethod
    def predictions_path(result: Path) -> Path:
        """The predictions file written beside an eval result."""
        return Path(result).with_suffix(PREDICTIONS_SUFFIX)

    # --- a run as a base model -----------------------------------------------------------------------
    def base_name(self, name: str | None = None) -> str:
        """The run's model.name, made loadable from any working folder.

        A base that is itself a run was named relative to where training ran; run.json keeps its absolute
        path in base_chain, used when the relative name does not resolve from here.
        """
        if name is None:
            name = ((self.read_config_dict() or {}).get("model") or {}).get("name")
        chain = (self.read_info() or {}).get("base_chain")
        if chain and not Path(name).expanduser().exists() and Path(chain[0]["run"]).is_dir():
            return chain[0]["run"]
        return name

    def as_base(self) -> RunBase:
        """What a finished run needs to be loaded as a base model, or RunNotFound saying what is missing."""
        path = self.path.resolve()
        raw = RunFolder(path).read_config_dict() or {}
        model, method, stage = raw.get("model") or {}, raw.get("method") or {}, raw.get("stage", "sft")
        if not model.get("name") or not method.get("name"):
            raise RunNotFound(f"{path}/{CONFIG_FILE}: no model.name or method.name; "
                              "not a config written by tunelab train")
        if stage in NOT_LANGUAGE_MODELS:
            raise RunNotFound(f"{path}: a {stage} run scores text and cannot be the base of another run; use an "
                              "sft, pretrain or preference run (or its base model) as model.name")
        weights = path / weights_dir_name(method["name"])
        if not (path / SUMMARY_FILE).is_file() or not weights.is_dir():
            raise RunNotFound(f"{path}: a run folder, but not a finished run (no {SUMMARY_FILE} or {weights.name}/); "
                              f"finish it with `tunelab train {path}/{CONFIG_FILE} train.resume=auto`, or point "
                              "model.name at a finished run")
        return RunBase(path, RunFolder(path).base_name(model["name"]), method["name"], stage, weights)
