"""tunelab: fine-tune large language models, from data to evidence to serving.

A run is a folder: `tunelab.train(cfg)` writes it and returns a Run; every later step
(evaluate, chat, export, serve) reads that folder.
"""

__version__ = "0.1.0"

__all__ = ["train", "Run", "load_config", "__version__"]


def __getattr__(name: str):
    # Lazy: `import tunelab` stays fast and torch-free until something is used.
    if name == "train":
        from tunelab.api import train

        return train
    if name == "Run":
        from tunelab.run import Run

        return Run
    if name == "load_config":
        from tunelab.config import load_config

        return load_config
    raise AttributeError(name)
