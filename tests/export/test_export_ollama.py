"""Ollama export: the Modelfile's TEMPLATE, stops and SYSTEM for known templates, and clear refusals for others."""

from __future__ import annotations

import pytest
from gguf import GGUFReader

from tunelab.export import CHAT_STYLES, ExportError, export, modelfile
from tunelab.export.ollama import detect_chat_style

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CHATML_PLAIN = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Meta's Llama 3 Instruct template, with the BOS written out.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = '<|begin_of_text|>' + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

ALPACA = ("{% for message in messages %}{% if message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
          "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}\n\n{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}### Response:\n{% endif %}")

EXPECTED_SMOLLM = '''FROM ./model-q8_0.gguf

TEMPLATE """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

PARAMETER stop "<|im_start|>"
PARAMETER stop "<|im_end|>"

SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""
'''


def test_smollm_chatml_modelfile_exact(tok):
    assert modelfile("model-q8_0.gguf", tok.chat_template, tok) == EXPECTED_SMOLLM


def test_detects_styles_and_default_system(tok):
    assert detect_chat_style(tok.chat_template, tok) == ("chatml", SMOLLM_SYSTEM)
    assert detect_chat_style(CHATML_PLAIN, tok) == ("chatml", None)
    assert detect_chat_style(LLAMA3, tok) == ("llama3", None)


def test_llama3_modelfile_has_its_template_and_stops(tok):
    text = modelfile("m.gguf", LLAMA3, tok, system="Answer in French.", parameters={"temperature": 0.2})
    assert f'TEMPLATE """{CHAT_STYLES["llama3"].go_template}"""' in text
    assert "<|begin_of_text|>" not in text  # llama.cpp adds BOS itself
    for stop in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert f'PARAMETER stop "{stop}"' in text
    assert "PARAMETER temperature 0.2" in text
    assert text.endswith('SYSTEM """Answer in French."""\n')


def test_system_override_replaces_the_template_default(tok):
    text = modelfile("m.gguf", tok.chat_template, tok, system="Be terse.")
    assert 'SYSTEM """Be terse."""' in text and SMOLLM_SYSTEM not in text


def test_untranslatable_template_is_refused_with_the_rendering(tok):
    with pytest.raises(ExportError, match=r"(?s)cannot translate this chat template.*chatml nor llama3.*### Instruction"):
        modelfile("m.gguf", ALPACA, tok)


def test_almost_chatml_is_refused(tok):
    """A template that looks like ChatML but renders differently (no newline after the role) is not translated."""
    near = CHATML_PLAIN.replace("message['role'] + '\n'", "message['role'] + ' '")
    assert near != CHATML_PLAIN
    with pytest.raises(ExportError, match="cannot translate"):
        modelfile("m.gguf", near, tok)


def test_export_writes_gguf_and_modelfile(llama, tok, tmp_path):
    path = export(llama, tok, tok.chat_template, "ollama", tmp_path / "ollama", quant="f16")
    assert path == tmp_path / "ollama" / "Modelfile"
    text = path.read_text()
    assert text.startswith("FROM ./model-f16.gguf\n")
    reader = GGUFReader(str(tmp_path / "ollama" / "model-f16.gguf"))
    assert reader.fields["tokenizer.chat_template"].contents() == tok.chat_template
    assert reader.fields["general.file_type"].contents() == 1  # MOSTLY_F16


def test_bad_template_fails_before_writing_weights(llama, tok, tmp_path):
    with pytest.raises(ExportError, match="cannot translate"):
        export(llama, tok, ALPACA, "ollama", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    with pytest.raises(ExportError, match="needs the run's chat template"):
        export(llama, tok, None, "ollama", tmp_path / "o")
