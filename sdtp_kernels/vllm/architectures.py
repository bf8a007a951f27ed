"""The architectures the plugin serves, and the vLLM releases it is tested with (docs/ARCHITECTURE.md §7.1). Plain
data, importable without vLLM: `sdtp export` names the SDTP architecture from here."""
from __future__ import annotations

# The host architecture (config.json `architectures`) -> the SDTP architecture an exported folder names.
SDTP_ARCHITECTURES = {
    "LlamaForCausalLM": "SDTPLlamaForCausalLM",
    "MistralForCausalLM": "SDTPMistralForCausalLM",
    "Qwen2ForCausalLM": "SDTPQwen2ForCausalLM",
    "Qwen3ForCausalLM": "SDTPQwen3ForCausalLM",
}
SERVED = frozenset(SDTP_ARCHITECTURES.values())

# The vLLM releases whose internals the plugin was tested against (engine_checks.check_internals).
TESTED_VLLM_VERSIONS = ("0.32.0",)

# hf_overrides keys that change the saved schedule at load time: "sdtp_<SDTPConfig field>", e.g. sdtp_keep_ratio.
OVERRIDE_PREFIX = "sdtp_"
