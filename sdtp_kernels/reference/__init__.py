"""`sdtp reference-model`: trains the reference model that installs with the package (a small Llama, from scratch,
on the synthetic retrieval task), built on the package's own schedule, masked pruning, checkpoints, learning-rate
schedule and evaluation. `trainer` runs the training, `measures` what is recorded of the result, `cli` the command."""
