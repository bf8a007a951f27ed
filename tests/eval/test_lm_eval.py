"""The harness model `sdtp` (lm-evaluation-harness 0.4.13) on the reference model: log-likelihoods under pruning
equal the masked simulation's on the same kept set, the retrieval tasks give `sdtp eval`'s numbers, batch sizes
agree, sdtp=off is the harness's own hf model, and perplexity tasks are refused."""
import json
import shutil

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from sdtp_kernels.eval.prompts import task_prompts
from sdtp_kernels.eval.quality import evaluate_pruning
from sdtp_kernels.hf import sdtp_config, sdtp_predictors
from sdtp_kernels.hf.masked import MaskedPruning, select_decide
from sdtp_kernels.hf.model_dir import load_causal_lm
from sdtp_kernels.lm_eval import SDTPLM, task_folder
from sdtp_kernels.models import reference_model
from sdtp_kernels.predictor_file import read_predictors

REFERENCE = str(reference_model())
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = task_folder(tmp_path_factory.mktemp("tasks"), count=24)
    return TaskManager(include_path=str(folder), include_defaults=False)  # the harness's own tasks: not needed


def test_the_task_folder_is_written_again_when_moved_or_stale(tmp_path):
    first = task_folder(tmp_path / "a", count=3)
    written = (first / "sdtp_retrieval.yaml").stat().st_mtime_ns
    assert task_folder(first, count=3) == first and (first / "sdtp_retrieval.yaml").stat().st_mtime_ns == written
    moved = tmp_path / "b"
    shutil.copytree(first, moved)  # its YAMLs still name a/'s JSONL, by absolute path
    for name in ("sdtp_retrieval.yaml", "sdtp_retrieval_mc.yaml"):
        assert str((moved / "sdtp_retrieval.jsonl").resolve()) in (task_folder(moved, count=3) / name).read_text()
    stamp = json.loads((moved / "complete.json").read_text())
    (moved / "complete.json").write_text(json.dumps({**stamp, "task": "another task.json"}))
    (moved / "sdtp_retrieval.jsonl").write_text("")
    assert len((task_folder(moved, count=3) / "sdtp_retrieval.jsonl").read_text().splitlines()) == 3


def _evaluate(tasks, model="sdtp", limit=24, batch_size=8, **args):
    model_args = ",".join(f"{k}={v}" for k, v in {"pretrained": REFERENCE, "dtype": "float32", **args}.items())
    out = simple_evaluate(model=model, model_args=model_args, tasks=["sdtp_retrieval", "sdtp_retrieval_mc"],
                          limit=limit, batch_size=batch_size, task_manager=tasks, device="cpu")
    return {"gen": out["results"]["sdtp_retrieval"]["exact_match,none"],
            "mc": out["results"]["sdtp_retrieval_mc"]["acc,none"]}


def test_loglikelihood_under_pruning_equals_the_masked_simulation():
    lm = SDTPLM(pretrained=REFERENCE, keep_ratio=0.7, batch_size=4, dtype="float32")
    texts = [lm.tokenizer.decode(p.input_ids) for p in task_prompts(f"{REFERENCE}/task.json", 4)]
    # Contexts of different lengths (right-padded together) and continuations of 1 and 3 tokens.
    pairs = [(texts[0], " v17"), (" ".join(texts[1].split()[9:]), " v3 <query> k5"), (texts[2], " v40"),
             (" ".join(texts[3].split()[30:]), " f1 f2 f3")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    harness = [score for score, _ in lm.loglikelihood(requests)]

    model, config = lm.model, sdtp_config(lm.model)
    predictors = sdtp_predictors(model)
    for (context, continuation), score in zip(pairs, harness):
        ids = torch.tensor([lm.tokenizer(context + continuation)["input_ids"]])
        tail = len(lm.tokenizer(continuation)["input_ids"])
        decide = select_decide(config, lambda s, hidden: predictors[s - 1].score(hidden), tails=[tail])
        with MaskedPruning(model, config, decide) as simulation, torch.no_grad():
            logits = model(ids[:, :-1]).logits.float().log_softmax(-1)
        assert not bool(simulation.alive[-1].all())  # something was pruned
        expected = logits[0, -tail:].gather(1, ids[0, -tail:, None]).sum()
        assert score == pytest.approx(float(expected), abs=1e-4)


@pytest.mark.parametrize("keep_ratio", [None, 1.0])
def test_a_batch_that_no_stage_prunes_scores_as_the_dense_model(keep_ratio):
    """Right-padded rows too short to prune (or keep_ratio 1.0) run the unpatched forward, whose logits keep the
    harness's layout: scored as the dense model scores them, whatever the batch size."""
    pairs = [("<bos> f1 f2 f3 f4", " f5"), ("<bos> f1 f2", " f3"), ("<bos> f7", " f8"), ("", " f9 f10 f11 f12")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    schedule = {} if keep_ratio is None else {"keep_ratio": keep_ratio}
    scores = {}
    for name, args in (("dense", {"sdtp": "off", "batch_size": 4}), ("sdtp1", {"batch_size": 1, **schedule}),
                       ("sdtp4", {"batch_size": 4, **schedule})):
        lm = SDTPLM(pretrained=REFERENCE, dtype="float32", **args)
        scores[name] = [score for score, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert scores["sdtp4"] == pytest.approx(scores["dense"], abs=1e-4)
    assert scores["sdtp1"] == pytest.approx(scores["dense"], abs=1e-4)


def test_batch_size_auto_probes_with_the_dense_forward(monkeypatch):
    """The harness sizes batches by calling the model on rows of no request: that probe runs dense, whose logits
    cover every position as a pruned batch's scattered logits do (pruned, it would cover only the kept tokens, and
    the size it found could overflow on a real batch)."""
    lm = SDTPLM(pretrained=REFERENCE, keep_ratio=0.7, batch_size="auto", max_batch_size=4, dtype="float32")
    calls = []
    model_call = SDTPLM._model_call

    def recorded(self, inps, attn_mask=None, labels=None):
        logits = model_call(self, inps, attn_mask=attn_mask, labels=labels)
        calls.append((self._rows(inps) is None, tuple(inps.shape[:2]), tuple(logits.shape[:2])))
        return logits

    monkeypatch.setattr(SDTPLM, "_model_call", recorded)
    texts = [lm.tokenizer.decode(p.input_ids) for p in task_prompts(f"{REFERENCE}/task.json", 4)]
    requests = [Instance("loglikelihood", {}, (text, " v17"), i) for i, text in enumerate(texts)]
    scores = [score for score, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert any(probe for probe, _, _ in calls) and any(not probe for probe, _, _ in calls)
    assert all(shape == logits for _, shape, logits in calls)
    fixed = SDTPLM(pretrained=REFERENCE, keep_ratio=0.7, batch_size=4, dtype="float32")
    assert scores == pytest.approx([score for score, _ in fixed.loglikelihood(requests, disable_tqdm=True)], abs=1e-5)


def test_the_retrieval_tasks_give_sdtp_evals_numbers_and_batch_sizes_agree(tasks):
    saved = read_predictors(f"{REFERENCE}/sdtp")
    model = load_causal_lm(REFERENCE).eval()
    ours = evaluate_pruning(model, saved.config, saved.state, task_prompts(f"{REFERENCE}/task.json", 24),
                            keep_ratios=(0.9, 0.7), methods=("sdtp",))
    assert _evaluate(tasks, sdtp="off")["gen"] == pytest.approx(ours["none"]["accuracy"])
    assert _evaluate(tasks, keep_ratio=0.9)["gen"] == pytest.approx(ours["sdtp"]["0.9"]["accuracy"])
    batched = _evaluate(tasks, keep_ratio=0.7)
    assert batched["gen"] == pytest.approx(ours["sdtp"]["0.7"]["accuracy"])
    assert _evaluate(tasks, keep_ratio=0.7, batch_size=1) == batched


def test_sdtp_off_is_the_harness_hf_model(tasks):
    assert _evaluate(tasks, sdtp="off", limit=12) == _evaluate(tasks, model="hf", limit=12)


def test_perplexity_tasks_are_refused_under_pruning():
    lm = SDTPLM(pretrained=REFERENCE, batch_size=1)
    request = Instance("loglikelihood_rolling", {}, ("<bos> f1 f2",), 0, metadata=("wikitext", 0, 1))
    with pytest.raises(ValueError, match="wikitext asks for loglikelihood_rolling .* sdtp=off"):
        lm.loglikelihood_rolling([request])
    assert len(SDTPLM(pretrained=REFERENCE, sdtp="off", batch_size=1).loglikelihood_rolling([request])) == 1


def test_model_args_are_checked():
    with pytest.raises(ValueError, match="sdtp must be on or off"):
        SDTPLM(pretrained=REFERENCE, sdtp="maybe")
    with pytest.raises(FileNotFoundError, match="pretrained= ./nowhere: no such folder"):
        SDTPLM(pretrained="./nowhere")
    for name, value, expected in [("num_stages", "2.5", "an integer"), ("start_layer", "4.9", "an integer"),
                                  ("keep_ratio", "seven", "a number")]:
        with pytest.raises(ValueError, match=f"model arg {name} must be {expected}, got '{value}'"):
            SDTPLM(pretrained=REFERENCE, **{name: value})
    with pytest.raises(ValueError, match="peft= adapters are not supported with pruning on: merge the adapter"):
        SDTPLM(pretrained=REFERENCE, peft="./adapter")
    with pytest.raises(ValueError, match="model arg seed must be an integer, got 'abc'"):
        SDTPLM(pretrained=REFERENCE, scorer="random", seed="abc")


def test_baselines_take_schedule_overrides_that_the_saved_predictors_would_refuse():
    """random and attention rank without predictors, so a start_layer= the saved predictors were not trained for is
    theirs to take; scorer=predictor refuses it."""
    lm = SDTPLM(pretrained=REFERENCE, scorer="random", start_layer=3, batch_size=1)
    config = sdtp_config(lm.model)
    assert config.start_layer == 3 and config.keep_ratio == read_predictors(f"{REFERENCE}/sdtp").config.keep_ratio
    with pytest.raises(ValueError, match="trained before layers"):
        SDTPLM(pretrained=REFERENCE, start_layer=3, batch_size=1)
