"""Compose a LLaVA-style vision-language model from a causal language model and a new vision encoder.

LLaVA (Liu et al., 2023, "Visual Instruction Tuning") reads an image with a vision encoder, maps its
patch features into the language model's embedding space with a small MLP (the projector), and puts
them in place of `<image>` tokens in the text. This module builds exactly that as transformers'
`LlavaForConditionalGeneration`: a SigLIP vision tower initialised from scratch (sized by the caller),
a fresh projector, and the language model's own weights. The result is saved as an ordinary HF folder
with a `LlavaProcessor` (the language model's tokenizer plus `<image>`, a SigLIP image processor and a
chat template that accepts image content parts), so anything that loads a VLM through
`AutoModelForImageTextToText` / `AutoProcessor` loads it, offline.

Why from scratch: the demo needs a vision encoder small enough to train on a CPU in minutes; a
pretrained one would be hundreds of megabytes and would not prove that the pipeline trains one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.models.tiny_vlm import chatml_vision_template

IMAGE_TOKEN = "<image>"

CHAT_TEMPLATE = chatml_vision_template(IMAGE_TOKEN)
"""ChatML (SmolLM2's own turn markers) without its default system prompt, with image parts as `<image>`.

The composed model is a new model; leaving out the 15-token default system prompt keeps its
sequences short, which is what makes training it on a CPU practical.
"""


@dataclass(frozen=True)
class VisionSpec:
    """The new vision encoder's size: a SigLIP ViT of `layers` blocks over `image_size` pixels."""

    image_size: int = 64
    patch_size: int = 16
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    mlp: int = 512

    @property
    def image_tokens(self) -> int:
        """How many `<image>` tokens one image becomes (one per patch; SigLIP has no CLS token)."""
        return (self.image_size // self.patch_size) ** 2


def compose_llava(language_model: str | Path, out_dir: str | Path, vision: VisionSpec = VisionSpec(),
                  seed: int = 0) -> Path:
    """Build a LLaVA model from a causal LM folder and a new SigLIP encoder; save model + processor to out_dir.

    `language_model` is an HF folder of a Llama-family causal LM with a ChatML tokenizer (SmolLM2's
    `gguf_as_hf_dir` output is one). The vision tower and projector are drawn from `seed`; the text
    weights are copied unchanged, and the embedding matrix grows by one row for `<image>` (that row
    never reaches the language model: LLaVA overwrites image positions with projected patches).
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    if vision.image_size % vision.patch_size:
        raise ValueError(f"vision image_size {vision.image_size} is not a multiple of patch_size {vision.patch_size}")
    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(language_model))
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(str(language_model), dtype=torch.float32)
    lm.resize_token_embeddings(len(tok), mean_resizing=False)
    vision_config = SiglipVisionConfig(image_size=vision.image_size, patch_size=vision.patch_size,
                                       hidden_size=vision.hidden, num_hidden_layers=vision.layers,
                                       num_attention_heads=vision.heads, intermediate_size=vision.mlp,
                                       vision_use_head=False)
    config = LlavaConfig(vision_config=vision_config, text_config=lm.config,
                         image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="full", vision_feature_layer=-1,
                         image_seq_length=vision.image_tokens, tie_word_embeddings=lm.config.tie_word_embeddings)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    missing = model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    if lm.generation_config is not None:
        model.generation_config = lm.generation_config
    model.generation_config.pad_token_id = tok.pad_token_id
    image_processor = SiglipImageProcessor(size={"height": vision.image_size, "width": vision.image_size},
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=vision.patch_size,
                               vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE,
                               image_token=IMAGE_TOKEN, num_additional_image_tokens=0)
    tok.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
