"""bench/saliency_ceiling.py on the committed reference model, with tiny counts: the JSON it documents."""
import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("saliency_ceiling", ROOT / "bench" / "saliency_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saliency_ceiling_writes_its_json(tmp_path):
    out = tmp_path / "ceiling.json"
    reference = ROOT / "models" / "reference"
    assert _script().main(["--model", str(reference), "--task", str(reference / "task.json"),
                           "--predictors", str(reference / "sdtp"), "--count", "6", "--fit-count", "8",
                           "--steps", "2", "--batch-size", "4", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["spearman"]) == {"fitted", "position", "key_swap"}
    for name, per_stage in results["spearman_per_stage"].items():
        assert len(per_stage) == 3 and all(-1 <= v <= 1 for v in per_stage), name
    assert results["prompts"] == 6 and results["saliency"]["sign"]
