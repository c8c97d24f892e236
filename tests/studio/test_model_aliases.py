"""The studio accepts exactly the model aliases the loader resolves: both read tunelab.models.MODEL_ALIASES."""

from __future__ import annotations

import pytest

from tunelab.models import MODEL_ALIASES, TINY_MODELS, ModelNotFound, resolve_model
from tunelab.models.loader import smollm2_gguf_path
from tunelab.studio.forms import _model_problem


def test_every_alias_resolves_and_the_studio_accepts_it(settings):
    try:
        gguf = smollm2_gguf_path()
    except ModelNotFound as e:
        pytest.skip(str(e))
    for name in MODEL_ALIASES:
        source = resolve_model(name)
        assert (source.kind, source.path) == ("gguf", str(gguf)), name
        assert _model_problem(name, settings) is None, name
    for name in TINY_MODELS:
        assert _model_problem(name, settings) is None, name


def test_a_name_the_loader_does_not_know_is_refused_by_both(settings):
    name = "smollm2-135m-base"  # near an alias, but not one
    assert name not in MODEL_ALIASES
    with pytest.raises(ModelNotFound, match="unknown model"):
        resolve_model(name)
    assert "model.name" in (_model_problem(name, settings) or "")
