"""SDTP in lm-evaluation-harness (tested with lm-eval 0.4.13): importing this package registers the harness model
`sdtp` (`model.SDTPLM`, a subclass of the harness's own `HFLM`), so that

    import sdtp_kernels.lm_eval, lm_eval
    lm_eval.simple_evaluate(model="sdtp", model_args="pretrained=DIR,keep_ratio=0.7", tasks=[...])

evaluates a model with its SDTP predictors; `python -m sdtp_kernels.lm_eval ...` takes the harness's command line
with the retrieval tasks of the reference model (`tasks.task_folder()`) included. docs/ARCHITECTURE.md §6.1."""
from .model import SDTPLM
from .tasks import TASKS, task_folder

__all__ = ["SDTPLM", "TASKS", "task_folder"]
