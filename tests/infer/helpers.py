"""Helpers of the serving tests: LoRA adapters on tiny-llama, a live uvicorn thread, direct generation."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch

API_KEY = "sk-test-123"
ADAPTER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(path: Path, seed: int) -> Path:
    """A LoRA adapter on tiny-llama whose B matrices are random (so it changes the output), saved with PEFT."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_model

    model = get_peft_model(load_model("tiny-llama"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=ADAPTER_TARGETS, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model.save_pretrained(path)
    return path


class ServerThread:
    """uvicorn serving `app` on a pre-bound 127.0.0.1 socket, in a daemon thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def chat_ids(tokenizer, template: str, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], chat_template=template,
                                             add_generation_prompt=True, tokenize=False)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def direct_generate(model, tokenizer, ids: list[int], max_new_tokens: int) -> tuple[str, int]:
    """Greedy generation of one unpadded prompt, cut at the first EOS: (text, completion tokens)."""
    eos = {tokenizer.eos_token_id, model.generation_config.eos_token_id}
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=sorted(eos))
    new = out[0, len(ids):].tolist()
    for i, t in enumerate(new):
        if t in eos:
            new = new[:i]
            break
    return tokenizer.decode(new, skip_special_tokens=True), len(new)
