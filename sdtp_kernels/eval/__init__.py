"""Evaluation of SDTP, one concern per module: `prompts` (held-out prompts and their batches), `quality` (the loop
over scorers and keep ratios), `marking` (marked saliency and its correlation with predictor scores), `statistics`,
`report` (JSON, table, plot), `cli` (`sdtp eval`) and `ceiling` (how far any stage predictor can follow the
marking)."""
