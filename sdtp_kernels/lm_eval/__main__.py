"""`python -m sdtp_kernels.lm_eval ARGS`: the harness's command line (`lm_eval ARGS`) with the `sdtp` model
registered and the reference model's retrieval tasks on the include path, e.g.

    python -m sdtp_kernels.lm_eval run --model sdtp --model_args pretrained=DIR,keep_ratio=0.7 --tasks sdtp_retrieval
"""
import sys

from lm_eval.__main__ import cli_evaluate

from . import task_folder  # noqa: F401  (importing the package registers the `sdtp` model)


def main() -> None:
    args = sys.argv[1:]
    evaluates = not args or args[0] == "run" or args[0].startswith("-")  # `run` (or no subcommand), not `ls`
    if evaluates and "--include_path" not in args and not any(a.startswith("--include_path=") for a in args):
        args += ["--include_path", str(task_folder())]
    sys.argv = [sys.argv[0], *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
