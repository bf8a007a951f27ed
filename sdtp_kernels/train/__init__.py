"""Training the SDTP predictors (docs/ARCHITECTURE.md §5): `mark.mark` computes gradient-times-input saliency and
writes it to safetensors shards; `trainer.train` trains the predictors with Gumbel-softmax masks while the LLM stays
frozen and writes them with `save_sdtp`. `cli.add_commands` exposes both as `sdtp mark` and `sdtp train`."""
