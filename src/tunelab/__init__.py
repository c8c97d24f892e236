"""tunelab: fine-tune large language models, from data to evidence to serving.

A run is a folder: `tunelab.train(cfg)` writes it and returns a Run; every later step
(evaluate, chat, export, serve) reads that folder.
"""

import os as _os

__version__ = "0.1.0"

# Offline first: nothing tunelab runs may reach a model hub. Set before huggingface_hub is imported
# (it reads the switch once), so transformers, datasets and the `kernels` fetch that bitsandbytes
# tries on import all stay local. An explicit HF_HUB_OFFLINE=0 in the environment is respected.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
