"""SDTP inside vLLM (docs/ARCHITECTURE.md §7): a general plugin that registers SDTP variants of vLLM's own Llama,
Mistral, Qwen2 and Qwen3 models, and `sdtp export`, which writes a model folder that vLLM serves with pruning.

Importing this package imports nothing of vLLM; `plugin.register` (the `vllm.general_plugins` entry point) and the
model classes do, and only run inside vLLM."""
