"""Data: record files, formats, chat templates with label masks, the tokenization pipeline, preparation tools."""
