"""`sdtp eval` on a tiny random Llama: the results JSON has its documented shape, the random baseline keeps the same
counts and protected tokens as SDTP, and the attention baseline keeps the tokens the last token attends to most."""
import argparse
import dataclasses
import json
import math

import pytest
import torch
from hf_tiny import PRUNING, VOCAB, prompts, tiny_model

from python_ref.select_tokens import protected_mask
from sdtp_kernels.eval.cli import add_commands
from sdtp_kernels.eval.marking import mark_prompts
from sdtp_kernels.eval.prompts import check_vocabulary, file_prompts
from sdtp_kernels.eval.report import format_table
from sdtp_kernels.eval.statistics import spearman
from sdtp_kernels.files import strict_json
from sdtp_kernels.hf import apply_sdtp, key_positions, remove_sdtp, save_sdtp, set_scorer
from sdtp_kernels.hf.model_call import output_cache


def _kept_sets(model, ids, mask, scorer, **options):
    set_scorer(model, scorer, **options)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    return key_positions(output_cache(out))


def test_cli_writes_the_documented_json_and_plot(tmp_path):
    model = tiny_model("llama", "eager")
    model.save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    apply_sdtp(model, PRUNING)
    save_sdtp(model, tmp_path / "predictors")
    g = torch.Generator().manual_seed(0)
    with open(tmp_path / "data.jsonl", "w") as f:
        for i in range(6):
            length = 30 + 2 * i  # different lengths: left padding inside a batch
            ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
            f.write(json.dumps({"input_ids": ids, "answer": [ids[10]], "answer_position": 10}) + "\n")

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    out, png = tmp_path / "results" / "quality.json", tmp_path / "quality.png"
    args = parser.parse_args([
        "eval", "--model", str(tmp_path / "model"), "--predictors", str(tmp_path / "predictors"),
        "--data", str(tmp_path / "data.jsonl"), "--out", str(out), "--plot", str(png), "--keep-ratios", "0.9,0.7",
        "--batch-size", "4", "--spearman-count", "4", "--device", "cpu",
    ])
    assert args.run(args) == 0
    results = json.loads(out.read_text())

    ratios = {"0.9", "0.7"}
    assert set(results) >= {"accuracy", "agreement", "spearman", "config", "command", "machine", "date"}
    assert 0 <= results["accuracy"]["none"] <= 1
    for method in ("sdtp", "random", "attention"):
        assert set(results["accuracy"][method]) == ratios
        assert set(results["agreement"]["top1"][method]) == ratios
        assert set(results["agreement"]["kl"][method]) == ratios
        assert all(0 <= a <= 1 for a in results["accuracy"][method].values())
        assert all(0 <= a <= 1 for a in results["answer_kept"][method].values())
    assert results["kept_fraction"]["0.7"] < results["kept_fraction"]["0.9"] < 1
    spearman = results["spearman"]
    assert -1 <= spearman["trained"] <= 1 and -1 <= spearman["untrained"] <= 1
    per_seed = spearman["untrained_per_seed"]
    assert len(per_seed) == 8 and spearman["untrained"] == pytest.approx(sum(per_seed) / 8)
    assert len(spearman["trained_per_stage"]) == len(PRUNING.stage_layers(8))
    assert results["config"]["prompts"] == 6 and results["config"]["stage_layers"] == [2, 4, 6]
    assert png.stat().st_size > 0


def test_random_baseline_keeps_the_same_counts_and_protected_tokens():
    model = apply_sdtp(tiny_model("llama", "eager"), PRUNING)
    ids, mask = prompts(batch=2)
    sdtp = _kept_sets(model, ids, mask, "predictor")
    rand = _kept_sets(model, ids, mask, "random", seed=0)
    lengths = mask.sum(1).tolist()
    protected = protected_mask(mask.bool(), PRUNING.num_sink, torch.tensor([PRUNING.local_count(n) for n in lengths]))
    assert len(sdtp) == len(rand) == 3
    differs = False
    for stage, (a, b) in enumerate(zip(sdtp, rand), start=1):
        assert a.shape == b.shape
        assert ((a >= 0).sum(1) == (b >= 0).sum(1)).all()
        assert (b >= 0).sum(1).tolist() == [PRUNING.kept_count(n, stage) for n in lengths]
        for row in range(2):
            kept = set(b[row][b[row] >= 0].tolist())
            assert set(protected[row].nonzero().squeeze(1).tolist()) <= kept
        differs |= not torch.equal(a, b)
    assert differs
    remove_sdtp(model)


def test_attention_baseline_keeps_the_most_attended_tokens():
    config = dataclasses.replace(PRUNING, num_stages=1)
    model = tiny_model("llama", "eager")
    ids, mask = prompts(batch=2)
    with torch.no_grad():
        attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    # The layer before the stage layer, the last token's row, averaged over heads.
    scores = attentions[config.start_layer - 1][:, :, -1, :].mean(1)
    apply_sdtp(model, config)
    (kept,) = _kept_sets(model, ids, mask, "attention")
    lengths = mask.sum(1).tolist()
    protected = protected_mask(mask.bool(), config.num_sink, torch.tensor([config.local_count(n) for n in lengths]))
    for row, length in enumerate(lengths):
        free = mask[row].bool() & ~protected[row]
        budget = config.kept_count(length, 1) - int(protected[row].sum())
        top = torch.topk(scores[row].masked_fill(~free, -1.0), budget).indices
        expected = set(top.tolist()) | set(protected[row].nonzero().squeeze(1).tolist())
        assert set(kept[row][kept[row] >= 0].tolist()) == expected
    remove_sdtp(model)


def test_attention_baseline_needs_eager_attention():
    model = apply_sdtp(tiny_model("llama", "sdpa"), PRUNING)
    with pytest.raises(ValueError, match="eager"):
        set_scorer(model, "attention")
    remove_sdtp(model)


def test_spearman():
    x = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert spearman(x, x.exp()) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # Ties take their average rank: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4).
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.arange(4.0)) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(spearman(torch.ones(3), torch.arange(3.0)))
    nan = float("nan")  # no rank: undefined (left out of the means), not ranked above everything
    assert math.isnan(spearman(torch.tensor([1.0, nan, 3.0]), torch.arange(3.0)))
    assert math.isnan(spearman(torch.arange(3.0), torch.tensor([nan, 1.0, 2.0])))


def test_answer_kept_counts_each_prompt_whose_answer_position_is_known_whatever_its_batch():
    """A prompt without a known answer position leaves only itself out of answer_kept, not its whole batch."""
    from sdtp_kernels.eval.prompts import Prompt, prompt_batches
    from sdtp_kernels.eval.quality import _Tally

    prompts = [Prompt([1, 2, 3, 4], 5, 1), Prompt([1, 2, 3], 5, None), Prompt([1, 2, 3, 4], 5, 2)]
    kept_of = {0: [1, 2, 3], 1: [1, 2, 3], 2: [0, 1, 3]}  # kept columns per prompt, in its own padded batch
    for batch_size in (1, 3):
        tally = _Tally()
        for first, batch in zip(range(0, 3, batch_size), prompt_batches(prompts, batch_size, torch.device("cpu"))):
            rows = range(first, first + batch.input_ids.shape[0])
            shift = [batch.input_ids.shape[1] - len(prompts[r].input_ids) for r in rows]
            kept = torch.tensor([[c + s for c in kept_of[r]] for r, s in zip(rows, shift)])
            tally.add(torch.zeros(len(rows), 8), None, batch, kept)
        assert (tally.answer_known, tally.answer_kept) == (2, 1), batch_size  # prompt 0's answer kept, 2's not


def test_marking_labels_the_prompts_own_labelled_tokens_as_training_does(tmp_path):
    """`mark_prompts` marks a prompt with labels inside it (in-place answers) exactly as training marks the same
    record read from a data file."""
    from sdtp_kernels.train.data import IGNORE_INDEX, collate, read_examples
    from sdtp_kernels.train.options import SaliencyOptions
    from sdtp_kernels.train.saliency import token_saliency

    model = tiny_model("llama", "sdpa").requires_grad_(False)
    ids = torch.randint(1, VOCAB, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    labels = [IGNORE_INDEX] * 30
    labels[20] = ids[20]
    record = {"input_ids": ids, "labels": labels, "answer": [ids[5]]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record) + "\n")
    [prompt] = file_prompts(str(path))
    options = SaliencyOptions(absolute=True)

    [marked] = mark_prompts(model, PRUNING, [prompt], options)
    [unlabelled] = mark_prompts(model, PRUNING, [dataclasses.replace(prompt, labels=None)], options)
    apply_sdtp(model, PRUNING)
    try:
        trained = token_saliency(model, PRUNING, collate(list(read_examples(str(path), str(tmp_path), VOCAB)), [0]),
                                 options)
    finally:
        remove_sdtp(model)
    torch.testing.assert_close(marked.saliency, trained)
    assert not torch.allclose(marked.saliency, unlabelled.saliency)


@pytest.mark.parametrize("labels", [[2], [2, 3.5, -100], [2, None, 3], [-101, 2, 3], [2, -5, 3], [2, True, 3]])
def test_file_prompts_checks_labels(tmp_path, labels):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"input_ids": [1, 2, 3], "answer": 4, "labels": labels}) + "\n")
    with pytest.raises(ValueError, match="line 1: `labels` must be a list of token ids .* one entry per `input_ids`"):
        file_prompts(str(path))


@pytest.mark.parametrize("record, message", [
    ({"input_ids": [1, 2, 3], "answer": True}, "`input_ids` must be a non-empty list of ints and `answer` an int"),
    ({"input_ids": [1, "2", 3], "answer": 4}, "`input_ids` must be a non-empty list of ints"),
    ({"input_ids": [1, 2, 3], "answer": 4, "answer_position": "1"}, "`answer_position` must be an int below the "
                                                                   "prompt's 3 tokens"),
    ({"input_ids": [1, 2, 3], "answer": 4, "answer_position": 3}, "`answer_position` must be an int below"),
])
def test_file_prompts_checks_types_and_the_answer_position(tmp_path, record, message):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=f"line 1: {message}"):
        file_prompts(str(path))


def test_tokens_outside_the_vocabulary_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"input_ids": [1, 2, 3], "answer": 4}) + "\n"
                    + json.dumps({"input_ids": [1, VOCAB, 3], "answer": 4}) + "\n")
    path.write_text(path.read_text() + json.dumps({"input_ids": [1, 2, 3], "answer": 4, "labels": [-100, VOCAB, 2]}))
    prompts = file_prompts(str(path))
    check_vocabulary(prompts[:1], VOCAB)
    with pytest.raises(ValueError, match=f"data.jsonl line 2: token id {VOCAB} is outside the model's vocabulary"):
        check_vocabulary(prompts, VOCAB)
    with pytest.raises(ValueError, match=f"data.jsonl line 3: label {VOCAB} is outside the model's vocabulary"):
        check_vocabulary(prompts[::2], VOCAB)


def test_undefined_results_are_null_in_the_json_and_n_a_in_the_table():
    nan = float("nan")
    results = {
        "accuracy": {"none": nan, "sdtp": {"0.5": 1.0}},
        "agreement": {"top1": {"sdtp": {"0.5": nan}}, "kl": {"sdtp": {"0.5": float("inf")}}},
        "answer_kept": {"sdtp": {"0.5": None}},  # no answer position: not measured
        "spearman": {"prompts": 2, "trained": nan, "trained_per_stage": [nan, 0.5], "untrained": 0.25,
                     "untrained_per_seed": [nan, 0.25]},
    }
    written = json.loads(strict_json(results, indent=2))
    assert written["accuracy"]["none"] is None and written["agreement"]["kl"]["sdtp"]["0.5"] is None
    assert written["spearman"]["trained_per_stage"] == [None, 0.5]
    table = format_table(results)
    assert format_table(written) == table and "nan" not in table and "inf" not in table
    assert "| none | 1.0 | n/a |" in table and "| sdtp | 0.5 | 1.000 | n/a | n/a | - |" in table
    assert "trained n/a (per stage n/a, 0.500), untrained 0.250 (mean of 2 initialisations: n/a)" in table


def test_untrained_seeds_must_be_positive():
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--model", "m", "--predictors", "p", "--task", "t", "--out", "o",
                           "--untrained-seeds", "0"])
