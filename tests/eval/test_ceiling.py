"""The saliency-ceiling experiment (`python -m sdtp_kernels.eval.ceiling`) on the installed reference model, with
tiny counts: the JSON it documents."""
import json

import pytest

from sdtp_kernels.eval.ceiling import main
from sdtp_kernels.models import reference_model


@pytest.mark.slow
def test_saliency_ceiling_writes_its_json(tmp_path):
    out = tmp_path / "ceiling.json"
    reference = reference_model()
    assert main(["--model", str(reference), "--task", str(reference / "task.json"),
                 "--predictors", str(reference / "sdtp"), "--count", "6", "--fit-count", "8",
                 "--steps", "2", "--batch-size", "4", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["spearman"]) == {"fitted", "position", "key_swap"}
    for name, per_stage in results["spearman_per_stage"].items():
        assert len(per_stage) == 3 and all(-1 <= v <= 1 for v in per_stage), name
    assert results["prompts"] == 6 and results["saliency"]["sign"]


def test_bad_input_is_one_line(tmp_path, capsys):
    reference = reference_model()
    with pytest.raises(SystemExit):
        main(["--model", str(reference), "--task", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")])
    assert "argument --task: expected an existing file" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--task", str(reference / "task.json"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"python -m sdtp_kernels.eval.ceiling: error: --model {tmp_path}")
    with pytest.raises(SystemExit):
        main(["--model", str(reference), "--task", str(reference / "task.json"), "--steps", "-1", "--out", "o"])
    assert "argument --steps: expected a positive integer, got '-1'" in capsys.readouterr().err
