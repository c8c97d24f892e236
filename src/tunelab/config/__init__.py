"""Typed configuration: schema, YAML loading, overrides and error reporting."""

from tunelab.config.loader import ConfigError, build_config, dump_config, load_config, schema_lines
from tunelab.config.schema import DataCfg, FullCfg, LoraCfg, ModelCfg, RunCfg, TrainCfg

__all__ = [
    "ConfigError", "build_config", "dump_config", "load_config", "schema_lines",
    "DataCfg", "FullCfg", "LoraCfg", "ModelCfg", "RunCfg", "TrainCfg",
]
