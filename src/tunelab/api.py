"""The Python API: everything the CLI does is a function here first."""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunCfg, build_config, load_config
from tunelab.run import Run

STAGES: dict[str, str] = {
    "sft": "tunelab.stages.sft",
    "pretrain": "tunelab.stages.pretrain",
    "dpo": "tunelab.stages.preference",
    "orpo": "tunelab.stages.preference",
    "simpo": "tunelab.stages.preference",
    "kto": "tunelab.stages.preference",
    "reward": "tunelab.stages.reward",
    "classify": "tunelab.stages.classify",
    "grpo": "tunelab.stages.grpo",
    "distill": "tunelab.stages.distill",
    "ppo": "tunelab.stages.ppo",
    "selftrain": "tunelab.stages.selftrain",
    "token_classify": "tunelab.stages.token_classify",
    "multihead": "tunelab.stages.multihead",
}
"""Stage name -> the module whose `run(cfg, progress) -> run_dir` trains it."""


def train(cfg: RunCfg | dict | str | Path, overrides: list[str] | None = None, progress: bool = True) -> Run:
    """Train a run from a RunCfg, a dict, or a YAML path (+ `key=value` overrides) and return the Run."""
    import importlib

    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg, overrides)
    elif isinstance(cfg, dict):
        from tunelab.config.loader import apply_overrides

        cfg = build_config(apply_overrides(dict(cfg), overrides or []))
    elif overrides:
        from tunelab.config.loader import apply_overrides

        cfg = build_config(apply_overrides(cfg.model_dump(mode="json"), overrides))
    if cfg.domain is not None and (cfg.stage != "classify" or cfg.classify.mode != "head"):
        from tunelab.config import ConfigError

        raise ConfigError([f"domain: set, but stage is {cfg.stage}"
                           + (f" with classify.mode {cfg.classify.mode}" if cfg.stage == "classify" else "")
                           + "; domain adaptation aligns a head classifier's features (stage: classify, "
                           "classify.mode: head); remove the domain section or change the stage"])
    from tunelab.data.pipeline import check_data_files

    check_data_files(cfg.data)  # unreadable or empty data fails here, not after the model has loaded
    stage = importlib.import_module(STAGES[cfg.stage])
    from tunelab.training.setup import discard_unstarted_run

    run_dir = Path(cfg.output_dir).absolute()
    created = _outermost_missing(run_dir)  # None: the folder exists (a resume, a retry) and is never removed
    try:
        return Run(stage.run(cfg, progress=progress))
    except (ValueError, FileNotFoundError, ImportError):  # bad input found after the run folder was set up
        if created is not None:
            discard_unstarted_run(run_dir, created)
        raise


def _outermost_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what `mkdir(parents=True)` will create), or None."""
    if path.exists():
        return None
    missing = path
    for parent in path.parents:
        if parent.exists():
            break
        missing = parent
    return missing
