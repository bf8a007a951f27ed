"""Tiny random models of the served families with random SDTP predictors, exported for vLLM, and the prompts the
vLLM tests run."""
import torch

from sdtp_kernels.config import SDTPConfig

VOCAB, LAYERS, MAX_LEN = 256, 8, 1024
# Stages before layers 2, 4 and 6 of 8; sinks and a local window protected.
SCHEDULE = SDTPConfig(start_layer=2, layer_step=2, keep_ratio=0.7, num_sink=2, local_ratio=0.1)
# Prompt lengths from 1 token to past two KV blocks (128 tokens each on the CPU), and as many tokens to generate.
PROMPT_LENGTHS = [1, 5, 17, 64, 127, 129, 200, 300, 333]
MAX_TOKENS = [3, 8, 1, 12, 5, 9, 4, 7, 6]

# Per family: transformers' (config, model) class names and what the shared shape needs besides. head_dim 32 is the
# smallest head size vLLM's CPU attention supports; a sliding window is refused (docs/ARCHITECTURE.md §7.4).
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"head_dim": 32, "sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v projections with biases
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),  # RMSNorm on q and k
}


def tiny_model(family: str = "llama", seed: int = 0):
    import transformers

    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=MAX_LEN, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        torch_dtype="float32", **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    # Biases start at zero and norm weights at one: move them, so that a misplaced bias or q/k norm shows.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def write_exported_model(root, schedule: SDTPConfig = SCHEDULE, seed: int = 0, family: str = "llama"):
    """root/model (the plain model), root/predictors (random predictors) and root/sdtp (the export); returns the
    export's path."""
    from sdtp_kernels.hf import apply_sdtp, save_sdtp
    from sdtp_kernels.vllm.export import export

    model = tiny_model(family, seed)
    model.save_pretrained(root / "model")
    torch.manual_seed(seed + 1)
    patched = apply_sdtp(tiny_model(family, seed), schedule)
    save_sdtp(patched, root / "predictors")
    return export(str(root / "model"), str(root / "predictors"), str(root / "sdtp"))


def prompts(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


# An engine of 5 KV blocks (128 tokens each on the CPU) and a batch that wants 8: four prompts that each fill most of
# a block, then grow into a second, so that requests are preempted and recomputed.
PREEMPTING_ENGINE = dict(num_gpu_blocks_override=5, max_model_len=512, disable_log_stats=False)


def preempting_batch():
    """(prompts, tokens to generate) that preempt requests in an engine started with PREEMPTING_ENGINE."""
    batch = [p[:120] for p in prompts()[7:]] + [prompts()[7][100:220], prompts()[8][50:170]]
    return batch, [20] * len(batch)
