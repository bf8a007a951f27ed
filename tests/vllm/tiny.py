"""A tiny random Llama with random SDTP predictors, exported for vLLM, and the prompts the vLLM tests run."""
import torch

from sdtp_kernels.config import SDTPConfig

VOCAB, LAYERS, MAX_LEN = 256, 8, 1024
# Stages before layers 2, 4 and 6 of 8; sinks and a local window protected.
SCHEDULE = SDTPConfig(start_layer=2, layer_step=2, keep_ratio=0.7, num_sink=2, local_ratio=0.1)
# Prompt lengths from 1 token to past two KV blocks (128 tokens each on the CPU), and as many tokens to generate.
PROMPT_LENGTHS = [1, 5, 17, 64, 127, 129, 200, 300, 333]
MAX_TOKENS = [3, 8, 1, 12, 5, 9, 4, 7, 6]


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    # head_dim 32: the smallest head size vLLM's CPU attention supports.
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, torch_dtype="float32")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def write_exported_model(root, schedule: SDTPConfig = SCHEDULE, seed: int = 0):
    """root/model (the plain model), root/predictors (random predictors) and root/sdtp (the export); returns the
    export's path."""
    from sdtp_kernels.hf import apply_sdtp, save_sdtp
    from sdtp_kernels.vllm.export import export

    model = tiny_llama(seed)
    model.save_pretrained(root / "model")
    torch.manual_seed(seed + 1)
    patched = apply_sdtp(tiny_llama(seed), schedule)
    save_sdtp(patched, root / "predictors")
    return export(str(root / "model"), str(root / "predictors"), str(root / "sdtp"))


def prompts(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
