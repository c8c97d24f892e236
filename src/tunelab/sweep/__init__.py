"""Hyperparameter sweeps: `run_sweep(config, space, trials, metric)` searches config values with Optuna.

Each trial is a normal run folder; the sweep folder holds the study (resumable), the table and the plots.
See `tunelab.sweep.study` for the layout and `tunelab.sweep.space` for space.yaml.
"""

from tunelab.sweep.space import SpaceError, load_space
from tunelab.sweep.study import SweepError, SweepResult, run_sweep

__all__ = ["SpaceError", "SweepError", "SweepResult", "load_space", "run_sweep"]
