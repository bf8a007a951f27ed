"""Synthetic tasks used to train and evaluate the project's own reference model (no weights can be downloaded)."""
