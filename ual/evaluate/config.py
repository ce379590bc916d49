"""Settings of the evaluation stage."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ual.common.config import setting
from ual.common.errors import InputError


@dataclass
class EvalConfig:
    """Evaluation stage settings. Paper values are noted; defaults are ours where a CPU needs less."""

    include_base: bool = setting(True, 'also evaluate the base model without an adapter (the reference point).')
    variants: list[str] = setting([], 'trained variants to evaluate (folder names under train/); empty is all complete ones.')
    model: str = setting("auto", 'base model when the run trained nothing; auto is the model the variants were trained from.')
    template: str = setting("auto", 'prompt template; auto is the one each variant was trained with.')
    batch_size: int = setting(8, 'sequences per forward pass, >= 1.')
    dtype: Literal["float32", "bfloat16"] = setting("float32", 'model dtype (float32 on CPU).')
    seed: int = setting(1337, 'sampling seed (per item, so results do not depend on batch size).')
    k_samples: int = setting(16, 'controlled: samples per high-entropy prompt, >= 0 (ours).')
    temperature: float = setting(1.0, 'controlled: sampling temperature of those samples, > 0.')
    max_new_tokens_low: int = setting(96, 'controlled: tokens generated for an arithmetic item, >= 1.')
    max_new_tokens_high: int = setting(16, 'controlled: tokens generated for an open prompt, >= 1.')
    math_max_new_tokens: int = setting(256, 'math: tokens generated per problem (paper 256).')
    math_do_sample: bool = setting(False, 'math: sample (paper: yes) or greedy (ours: deterministic).')
    math_temperature: float = setting(0.8, 'math: temperature when sampling (paper 0.8).')
    math_top_k: int = setting(200, 'math: top-k when sampling (paper 200).')
    math_n: int = setting(1, 'math: outputs per problem, >= 1 (paper 1).')
    chat_max_new_tokens: int = setting(256, 'chat: tokens generated per instruction (paper 1536; ours 256 on CPU).')
    chat_do_sample: bool = setting(True, 'chat: sample (paper: yes).')
    chat_temperature: float = setting(0.8, 'chat: temperature (paper 0.8).')
    chat_top_k: int = setting(200, 'chat: top-k (paper 200).')
    judge: Literal["local", "openai", "none"] = setting("local", 'local (a local LM reads the preference from token probabilities), openai (an OpenAI-compatible endpoint, AlpacaEval-2.0-style) or none.')
    judge_model: str = setting("smollm2-135m", 'local: a model name; openai: the model id.')
    judge_base_url: str = setting("https://api.openai.com/v1", 'openai judge: OpenAI-compatible endpoint.')
    judge_api_key_env: str = setting("OPENAI_API_KEY", 'openai judge: NAME of the environment variable holding the key (the key is never a setting).')
    judge_concurrency: int = setting(4, 'openai judge: requests in flight at once.')
    lc_method: str = setting("auto", 'length-controlled win rate method of ual.evaluate.metrics.winrate: auto, alpaca_eval, published, refit or none.')
    clustering: bool = setting(False, "run the paper's token-clustering analysis.")
    clustering_set: str = setting("train", 'probe texts: train, a probe set (data.probe_sets) or an eval set name.')
    clustering_n: int = setting(100, 'probe texts, >= 1.')
    clustering_top_k: int = setting(42, 'most frequent tokens whose pairs are scored (paper 42).')
    clustering_max_length: int = setting(256, 'tokens per probe text.')

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens_low", "max_new_tokens_high", "math_max_new_tokens", "math_n",
                     "chat_max_new_tokens", "clustering_n", "judge_concurrency"):
            if getattr(self, name) < 1:
                raise InputError(None, None, name, f"must be >= 1, got {getattr(self, name)}")
        if self.k_samples < 0:
            raise InputError(None, None, "k_samples", f"must be >= 0, got {self.k_samples}")
