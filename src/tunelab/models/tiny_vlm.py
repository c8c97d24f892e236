"""Tiny random vision-language models of real families (2 text layers, hidden 64; 2 vision layers) with a real
processor, built offline, for fast tests.

Each is a complete Hugging Face folder (config, safetensors, tokenizer, processor, chat template) that
`AutoModelForImageTextToText` and `AutoProcessor` load, exactly like a downloaded VLM. The tokenizer is
SmolLM2's with the family's image tokens added. Weights come from a fixed seed and the folder is built once
into the tunelab cache, so `tiny-llava` names the same model in every process (a run reloads exactly).

- `tiny-llava`: LlavaForConditionalGeneration (CLIP vision tower 32x32 px, patch 8 -> 16 image tokens);
- `tiny-idefics3`: Idefics3ForConditionalGeneration, the SmolVLM family (pixel-shuffle connector, 4 tokens);
- `tiny-qwen2-vl`: Qwen2VLForConditionalGeneration (dynamic resolution: 4 to 16 image tokens by image size,
  M-RoPE positions);
- `tiny-qwen2.5-vl`: Qwen2_5_VLForConditionalGeneration (the same with a windowed vision tower).
The two Qwen processors use transformers' PIL image processor and no video processor, so they build and
load with or without torchvision (tunelab.models.image_only).
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VLMS = ("tiny-llava", "tiny-idefics3", "tiny-qwen2-vl", "tiny-qwen2.5-vl")
BUILD_VERSION = "2"  # bump when a builder changes, so cached folders are rebuilt

IMAGE_PART = "{{ IMAGE }}"
CONTENT_PARTS_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + IMAGE_PART +
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML whose messages may hold OpenAI-style content parts; `IMAGE` is replaced by the family's image text."""


def chatml_vision_template(image_text: str) -> str:
    """The ChatML content-parts template with `image_text` (e.g. '<image>') where each image goes."""
    return CONTENT_PARTS_TEMPLATE.replace(IMAGE_PART, "{{ '" + image_text + "' }}")


def _text_config(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1,
                eos_token_id=2, pad_token_id=2, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)


def _tokenizer(extra_tokens: list[str]):
    from tunelab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": extra_tokens})
    return tok


def build_llava():
    """(model, processor) of a tiny LLaVA: CLIP tower on 32x32 images, 2-layer MLP projector, Llama text model."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _tokenizer(["<image>"])
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    cfg = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**_text_config(len(tok))),
                      image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default", tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(cfg)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, num_additional_image_tokens=1,
                          vision_feature_select_strategy="default", chat_template=chatml_vision_template("<image>"))
    return model, proc


def build_idefics3():
    """(model, processor) of a tiny Idefics3 (SmolVLM family): 32x32 images, scale factor 2 -> 4 image tokens."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    cfg = Idefics3Config(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, image_size=32, patch_size=8),
                         text_config=LlamaConfig(**_text_config(len(tok))),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2, tie_word_embeddings=True)
    model = Idefics3ForConditionalGeneration(cfg)
    images = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                       do_image_splitting=False)
    proc = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,
                             chat_template=chatml_vision_template("<image>"))
    return model, proc


QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_IMAGE_TEXT = "<|vision_start|><|image_pad|><|vision_end|>"


def _qwen_parts(vision: dict, processor_cls: type):
    """(config kwargs, processor) shared by tiny Qwen2-VL and Qwen2.5-VL.

    The image processor is the PIL one (no torchvision needed): images are resized to multiples of 28 px
    between 56x56 and 112x112 (4 to 16 image tokens), cut into 14 px patches with 2 frames each and merged
    2x2 into one token. The processor is built without a video processor (tunelab.models.image_only).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tunelab.models.image_only import image_only

    tok = _tokenizer(QWEN_TOKENS)
    ids = tok.convert_tokens_to_ids
    text = dict(**_text_config(len(tok)), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                          "mrope_section": [2, 3, 3]})
    cfg = dict(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
               video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
               vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True)
    images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                      temporal_patch_size=2)
    proc = image_only(processor_cls)(image_processor=images, tokenizer=tok,
                                     chat_template=chatml_vision_template(QWEN_IMAGE_TEXT))
    return cfg, proc


def build_qwen2_vl():
    """(model, processor) of a tiny Qwen2-VL: ViT of 2 blocks (width 32), patch merger, M-RoPE text model."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    cfg, proc = _qwen_parts(vision, Qwen2VLProcessor)
    return Qwen2VLForConditionalGeneration(Qwen2VLConfig(**cfg)), proc


def build_qwen2_5_vl():
    """(model, processor) of a tiny Qwen2.5-VL: windowed ViT of 2 blocks (the second with full attention),
    RMSNorm and gated MLP, patch merger, M-RoPE text model."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  fullatt_block_indexes=[1], window_size=56, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    cfg, proc = _qwen_parts(vision, Qwen2_5_VLProcessor)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg)), proc


BUILDERS = {"tiny-llava": build_llava, "tiny-idefics3": build_idefics3, "tiny-qwen2-vl": build_qwen2_vl,
            "tiny-qwen2.5-vl": build_qwen2_5_vl}


def build_tiny_vlm(name: str, out_dir: str | Path) -> Path:
    """Write the tiny VLM `name` (seeded weights, processor, template) as a HF folder at `out_dir`."""
    if name not in BUILDERS:
        raise KeyError(f"unknown tiny VLM {name!r}; choose from {', '.join(TINY_VLMS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model, proc = BUILDERS[name]()
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    return out


def tiny_vlm_dir(name: str) -> Path:
    """The cached folder of a tiny VLM, built on first use (atomically, so parallel tests never see half of it)."""
    from tunelab.models.gguf import ModelNotFound, cache_root
    from tunelab.utils.io import atomic_dir

    target = cache_root() / "tiny-vlm" / f"{name}-v{BUILD_VERSION}"
    if (target / "config.json").is_file():
        return target
    try:
        with atomic_dir(target) as tmp:
            build_tiny_vlm(name, tmp)
    except ImportError as e:  # a transformers without the family: a clear message, not a traceback
        raise ModelNotFound(f"model {name}: {e}") from None
    return target
