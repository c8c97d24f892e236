"""tunelab: fine-tune large language models, from data to evidence to serving.

A run is a folder: `tunelab.train(cfg)` writes it and returns a Run; every later step
(evaluate, chat, export, serve) reads that folder.
"""

__version__ = "0.1.0"
