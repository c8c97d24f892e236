"""Data preparation: clean, deduplicate, split, extract dialogue from scripts, augment and generate.

Every tool takes records as plain dicts (or `tunelab.data.io.Record`s, whose 'file:line' positions
then appear in reports) in any supported format, and returns what it kept plus rejected rows with
their reason and position, so nothing is silently lost.
"""

from tunelab.data.prepare.augment import AUGMENTERS, augment
from tunelab.data.prepare.clean import CLEAN_STEPS, clean, clean_text
from tunelab.data.prepare.dedup import dedup, shingles
from tunelab.data.prepare.dialogue import extract_dialogue, parse_script
from tunelab.data.prepare.generate import generate_examples, generate_with_model, hf_generator
from tunelab.data.prepare.result import PrepResult
from tunelab.data.prepare.split import SplitResult, split
from tunelab.data.prepare.text import TextField, map_text, record_key, record_text, text_fields

__all__ = ["AUGMENTERS", "CLEAN_STEPS", "PrepResult", "SplitResult", "TextField", "augment", "clean", "clean_text",
           "dedup", "extract_dialogue", "generate_examples", "generate_with_model", "hf_generator", "map_text",
           "parse_script", "record_key", "record_text", "shingles", "split", "text_fields"]
