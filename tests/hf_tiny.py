"""Tiny seeded models of every SDTP-tested family, and the prompts the integration tests run on them."""
import torch
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    Cohere2Config,
    Cohere2ForCausalLM,
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Glm4Config,
    Glm4ForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)

from sdtp_kernels.config import SDTPConfig
from sdtp_kernels.hf import sdtp_predictors

VOCAB, LAYERS, PROMPT, PAD = 128, 8, 40, 7
# Stages before layers 2, 4 and 6 of 8: three stages, each layer group of a different length.
PRUNING = SDTPConfig(start_layer=2, layer_step=2, keep_ratio=0.7, num_sink=2, local_ratio=0.1)

# The sizes every tiny decoder shares (also for models the tests build without MODELS: refused architectures).
DECODER = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
               pad_token_id=0)
_ROPE = dict(DECODER, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
_MOE = dict(num_experts_per_tok=2)
MODELS = {  # name: (model class, config class, config arguments)
    "llama": (LlamaForCausalLM, LlamaConfig, _ROPE),
    "mistral": (MistralForCausalLM, MistralConfig, _ROPE),  # its default window (4096) > the prompt
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, _ROPE),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {**_ROPE, "head_dim": 16}),
    "bloom": (BloomForCausalLM, BloomConfig, {"vocab_size": VOCAB, "hidden_size": 64, "n_layer": LAYERS, "n_head": 4}),
    # Sliding and full layers alternate (default windows: 4096), soft-capping, two rotary tables.
    "gemma2": (Gemma2ForCausalLM, Gemma2Config, {**_ROPE, "head_dim": 16}),
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig, {**_ROPE, "head_dim": 16}),
    "phi3": (Phi3ForCausalLM, Phi3Config, _ROPE),  # fused QKV
    "olmo2": (Olmo2ForCausalLM, Olmo2Config, _ROPE),  # QK-norm, norms after attention and MLP
    "granite": (GraniteForCausalLM, GraniteConfig, _ROPE),  # residual and attention multipliers
    "mixtral": (MixtralForCausalLM, MixtralConfig, {**_ROPE, "num_local_experts": 4, **_MOE}),
    "qwen3moe": (Qwen3MoeForCausalLM, Qwen3MoeConfig,
                 {**_ROPE, "head_dim": 16, "num_experts": 4, "moe_intermediate_size": 32, **_MOE}),
    # MoE with shared experts, latent attention, one complex rotary table (freqs_cis) instead of (cos, sin).
    "deepseek_v2": (DeepseekV2ForCausalLM, DeepseekV2Config,
                    {**_ROPE, "num_key_value_heads": 4, "n_routed_experts": 4, "moe_intermediate_size": 32,
                     "first_k_dense_replace": 1, "q_lora_rank": None, "kv_lora_rank": 16, "qk_rope_head_dim": 8,
                     "qk_nope_head_dim": 8, "v_head_dim": 16, "n_shared_experts": 1, **_MOE}),
    # Sliding (default window 128) and full layers alternate, a learned attention sink per head, MoE blocks.
    "gpt_oss": (GptOssForCausalLM, GptOssConfig, {**_ROPE, "head_dim": 16, "num_local_experts": 4, **_MOE}),
    # Three sliding layers (default window 4096) to one full layer without rotary; attention and MLP in parallel.
    "cohere2": (Cohere2ForCausalLM, Cohere2Config, _ROPE),
    "smollm3": (SmolLM3ForCausalLM, SmolLM3Config, _ROPE),  # every fourth layer without rotary (NoPE)
    "glm4": (Glm4ForCausalLM, Glm4Config, {**_ROPE, "head_dim": 16}),  # rotary on half of each head, interleaved
}
# How each family with sliding-window attention gets windows of `w` tokens.
WINDOWED = {
    "mistral": lambda w: {"sliding_window": w},  # every layer
    # as Qwen2 checkpoints set it: the layers from max_window_layers on slide (the config derives layer_types)
    "qwen2": lambda w: {"use_sliding_window": True, "sliding_window": w, "max_window_layers": 4},
    "gemma2": lambda w: {"sliding_window": w},  # sliding and full layers alternate
    "gemma3": lambda w: {"sliding_window": w},  # five sliding layers to one full
    "gpt_oss": lambda w: {"sliding_window": w},  # sliding and full layers alternate
    "cohere2": lambda w: {"sliding_window": w},  # three sliding layers to one full
}
# BLOOM has no SDPA path; Gemma 2's soft-capping needs eager attention; GPT-OSS's sinks have eager attention only.
EAGER_ONLY = ("bloom", "gemma2", "gpt_oss")
# (model, attention implementation)
VARIANTS = [(m, a) for m in MODELS for a in ("eager", "sdpa") if not (m in EAGER_ONLY and a == "sdpa")]


def tiny_model(name: str, attn: str = "eager", seed: int = 0, **overrides):
    cls, config_cls, arguments = MODELS[name]
    config = config_cls(**{**arguments, **overrides})  # the constructor derives settings (layer_types) from them
    if name != "bloom":  # BLOOM's config takes no attention implementation
        config._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls(config).eval()
    # Generate exactly max_new_tokens (no early stop on a random model's EOS); pad with 0.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def spread_predictors(model, scale: float = 1.0):
    """Adds scale * N(0, 1) noise (torch's global generator) to the predictors of a patched model, so that its scores
    spread over a wider range than a fresh initialisation gives them. Returns the model."""
    with torch.no_grad():
        for p in sdtp_predictors(model).parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def prompts(batch: int = 2, seed: int = 1):
    """Random prompts of PROMPT tokens; row 1 (if any) is left-padded by PAD."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, PROMPT), generator=g)
    mask = torch.ones(batch, PROMPT, dtype=torch.long)
    if batch > 1:
        mask[1, :PAD] = 0
        ids[1, :PAD] = 0
    return ids, mask


def training_workdir(root, short_line=None):
    """`root` with a saved tiny Llama (no tokenizer) and data.jsonl: 16 pre-tokenised prompt + answer records of 20
    to 39 tokens (line `short_line`, if given, only 3: every token protected). Returns root."""
    import json

    tiny_model("llama", "eager").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    with open(root / "data.jsonl", "w") as f:
        for line in range(1, 17):
            length = 3 if line == short_line else int(torch.randint(20, 40, (1,), generator=g))
            prompt = torch.randint(1, VOCAB, (length,), generator=g).tolist()
            f.write(json.dumps({"input_ids": prompt, "answer": [prompt[1]]}) + "\n")
    return root
