"""Every shell and Python block of the README runs as written, from the repository root after set-up, so that none
of them can rot. They run in a copy of the tree (sharing .venv), so that the commands that reproduce committed
results do not overwrite them; the long runs get small arguments (QUICK) and SDTP_BENCH_QUICK=1."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# (README text, what the test runs instead): the same commands with small sizes.
QUICK = [
    ("--count 4000", "--count 64"),
    ("--max-steps 800", "--max-steps 2"),
    ("--count 500", "--count 16 --spearman-count 4 --untrained-seeds 2"),
    ("--contexts 1024 2048 4096 8192", "--contexts 128 --new-tokens 8"),  # not 128: 16 generates
    ("--out bench/results/saliency-ceiling.json", "--out bench/results/saliency-ceiling.json --count 6 --fit-count 8 "
                                                 "--steps 2"),
    ("--tasks sdtp_retrieval sdtp_retrieval_mc", "--tasks sdtp_retrieval sdtp_retrieval_mc --limit 6"),
    ("bench/harness.py --out", "bench/harness.py --limit 6 --out"),
    ("limit=20", "limit=6"),
]


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced bash and python block of the README, in order."""
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```(bash|python)\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_the_blocks_this_test_expects():
    blocks = readme_blocks()
    assert sum(lang == "python" for lang, _ in blocks) >= 2 and sum(lang == "bash" for lang, _ in blocks) >= 6
    text = "".join(code for _, code in blocks)
    assert all(long in text for long, _ in QUICK), [long for long, _ in QUICK if long not in text]


def _copy_of_the_tree(target: pathlib.Path) -> pathlib.Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    (target / ".venv").symlink_to(pathlib.Path(sys.prefix))
    if (ROOT / "build" / "lm-eval").is_dir():  # the harness scripts/setup.sh installed: not installed again
        (target / "build").mkdir(exist_ok=True)
        (target / "build" / "lm-eval").symlink_to(ROOT / "build" / "lm-eval")
    return target


@pytest.mark.slow
def test_every_readme_block_runs(tmp_path):
    # The copy shares .venv: bring its build stamp up to date from this checkout first, so that the README's
    # `scripts/setup.sh` finds nothing to build in the copy and the editable install keeps pointing here.
    subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, check=True, capture_output=True, timeout=1800)
    repo = _copy_of_the_tree(tmp_path / "repo")
    # Python blocks run with the harness that scripts/setup.sh installs on the path, as its bash blocks do.
    env = {**os.environ, "SDTP_BENCH_QUICK": "1", "PYTHONPATH": str(ROOT / "build" / "lm-eval"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    ran = 0
    for lang, code in readme_blocks():
        if lang == "bash" and "pytest -q" in code:
            continue  # the test command itself, running now
        for long, small in QUICK:
            code = code.replace(long, small)
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"README block failed:\n{code}\n--- stderr:\n{done.stderr[-4000:]}"
        ran += 1
    assert ran >= 8
