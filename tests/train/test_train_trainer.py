"""Predictor training end to end on a tiny Llama: a step lowers the loss, resume is exact, 2-process DDP agrees,
and the `sdtp mark` / `sdtp train` commands run on a model directory without a tokenizer."""
import json
import os
import shutil
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from hf_tiny import PRUNING, VOCAB, tiny_model, training_workdir
from safetensors.torch import load_file

import sdtp_kernels.train.trainer as trainer
from sdtp_kernels.cli import main
from sdtp_kernels.hf import apply_sdtp, sdtp_predictors
from sdtp_kernels.predictor_file import read_predictors
from sdtp_kernels.train.checkpoint import load_checkpoint, save_checkpoint
from sdtp_kernels.train.data import collate, read_examples
from sdtp_kernels.train.lr import warmup_cosine
from sdtp_kernels.train.objective import PredictorObjective
from sdtp_kernels.train.options import LossOptions, SaliencyOptions, TrainOptions
from sdtp_kernels.train.processes import MEASURED_FIELDS
from sdtp_kernels.train.saliency import token_saliency

WEIGHTS = "sdtp_predictors.safetensors"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A saved tiny Llama (no tokenizer) and 16 pre-tokenised prompt + answer records."""
    return training_workdir(tmp_path_factory.mktemp("train"))


def _options(workdir, out, **overrides) -> TrainOptions:
    settings = dict(sdtp=PRUNING, batch_size=4, max_steps=4, save_every=2, lr=1e-2, device="cpu")
    paths = dict(model=str(workdir / "model"), data=str(workdir / "data.jsonl"), out=str(out))
    return TrainOptions(**{**paths, **settings, **overrides})


@pytest.mark.parametrize("task", ["lm", "kl"])
def test_one_step_lowers_the_loss(workdir, task):
    model = apply_sdtp(tiny_model("llama", "eager").requires_grad_(False), PRUNING)
    predictors = sdtp_predictors(model).float().requires_grad_(True)
    examples = list(read_examples(str(workdir / "data.jsonl"), str(workdir / "model"), VOCAB))[:4]
    batch = collate(examples, range(4))
    saliency = token_saliency(model, PRUNING, batch)
    teacher = trainer._unpruned_logits(model, batch) if task == "kl" else None
    objective = PredictorObjective(model, PRUNING, predictors, LossOptions(task=task))
    optimizer = torch.optim.AdamW(predictors.parameters(), lr=1e-3)

    def loss():  # the same Gumbel noise every time: a fixed batch
        return objective(batch, saliency, teacher, [torch.Generator().manual_seed(row) for row in range(4)])["loss"]

    before = loss()
    before.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictors.parameters())
    optimizer.step()
    assert loss().item() < before.item()


def _log(out) -> list[dict]:
    """The training log without what the machine measured (time, memory): the part identical runs agree on."""
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(set(MEASURED_FIELDS) <= set(line) for line in lines)
    return [{k: v for k, v in line.items() if k not in MEASURED_FIELDS} for line in lines]


class _Interrupted(Exception):
    pass


def test_resume_continues_exactly(workdir, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    trainer.train(_options(workdir, straight))

    def save_then_stop(out, state):  # the run dies right after its step-2 checkpoint
        save(out, state)
        raise _Interrupted

    save = trainer.save_checkpoint
    resumed = tmp_path / "resumed"
    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(_Interrupted):
        trainer.train(_options(workdir, resumed))
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    with pytest.raises(ValueError, match="already holds a training checkpoint; pass --resume"):
        trainer.train(_options(workdir, resumed))
    with pytest.raises(ValueError, match=r"different run \(seed: checkpoint 0, now 1\)"):
        trainer.train(_options(workdir, resumed, resume=True, seed=1))
    with pytest.raises(ValueError, match=r"different run \(optimiser: checkpoint .*'lr': 0.01.*now .*'lr': 5.0"):
        trainer.train(_options(workdir, resumed, resume=True, lr=5.0))
    _refuses_another_model_or_data(workdir, resumed)
    with open(resumed / "train_log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a line cut short when the run died
    moved = tmp_path / "moved"  # the same model and data elsewhere: still the same run
    shutil.copytree(workdir / "model", moved / "model")
    shutil.copy(workdir / "data.jsonl", moved / "data.jsonl")
    trainer.train(_options(moved, resumed, resume=True))

    a, b = load_file(straight / WEIGHTS), load_file(resumed / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log(straight) == _log(resumed)
    state = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["data_position"] == {"epoch": 1, "batch": 0}


def test_a_resume_with_more_steps_follows_the_longer_schedule(workdir, tmp_path):
    out = tmp_path / "out"
    trainer.train(_options(workdir, out, max_steps=1))  # its cosine ends at lr 0
    # The default saliency options, now given explicitly: the same run.
    trainer.train(_options(workdir, out, max_steps=2, resume=True, saliency=SaliencyOptions()))
    assert [line["lr"] for line in _log(out)] == [1e-2, 1e-2 * warmup_cosine(1, 0, 2)] == [1e-2, 5e-3]
    with pytest.raises(ValueError, match=r"checkpoint in .* is at step 2, past --max-steps 1; pass --max-steps 2"):
        trainer.train(_options(workdir, out, max_steps=1, resume=True))


def _refuses_another_model_or_data(workdir, resumed):
    """Another checkpoint of the same architecture, and data of as many records, as long, one token changed."""
    other = resumed.parent / "other"
    tiny_model("llama", "eager", seed=7).save_pretrained(other / "model")
    with pytest.raises(ValueError, match=r"different run \(model: checkpoint .*'weights'"):
        trainer.train(_options(workdir, resumed, resume=True, model=str(other / "model")))
    records = [json.loads(line) for line in (workdir / "data.jsonl").read_text().splitlines()]
    records[0]["input_ids"][5] = records[0]["input_ids"][5] % (VOCAB - 1) + 1
    (other / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"different run \(data: checkpoint .*'examples'"):
        trainer.train(_options(workdir, resumed, resume=True, data=str(other / "data.jsonl")))


def test_a_checkpoint_from_before_a_setting_was_checked_resumes_with_a_warning(tmp_path):
    save_checkpoint(str(tmp_path), {"identity": {"seed": 0}, "step": 2})
    with pytest.warns(UserWarning, match="predates the check of loss"):
        assert load_checkpoint(str(tmp_path), {"seed": 0, "loss": {"task": "lm"}}, ["step"])["step"] == 2
    with pytest.raises(ValueError, match=r"different run \(seed: checkpoint 0, now 1\)"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_checkpoint(str(tmp_path), {"seed": 1, "loss": {"task": "lm"}}, ["step"])
    save_checkpoint(str(tmp_path), {"weights": torch.zeros(2)})  # a file torch reads, not one sdtp train wrote
    with pytest.raises(ValueError, match=r"not a checkpoint of this command \(it lacks identity, step\)"):
        load_checkpoint(str(tmp_path), {"seed": 0}, ["step"])


def test_log_has_the_schedules_kept_fraction_and_a_gap_warns(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "KEPT_GAP_WARNING", -1.0)  # any gap warns: the wiring, not the threshold
    with pytest.warns(UserWarning, match=r"more of the prompt than the schedule.*--ratio-weight"):
        trainer.train(_options(workdir, tmp_path / "out", max_steps=2))
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(0 < line["kept"] <= 1 for line in log)
    # 3 stages at keep_ratio 0.7: the last keeps about 0.7 ** 3 of each prompt
    assert all(abs(line["kept_target"] - 0.7 ** 3) < 0.05 for line in log)
    monkeypatch.setattr(trainer, "KEPT_GAP_WARNING", 2.0)  # no gap reaches it: silent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(_options(workdir, tmp_path / "quiet", max_steps=2))
    assert not [w for w in caught if "--ratio-weight" in str(w.message)]


def _ddp_worker(rank: int, port: int, workdir, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    model = trainer.train(_options(workdir, out, batch_size=2, max_steps=3))
    torch.save(sdtp_predictors(model).state_dict(), os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_process_ddp_agrees(workdir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, workdir, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    written = load_file(tmp_path / WEIGHTS)  # by rank 0 alone
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key])
        stage, name = key.split(".", 1)
        assert torch.equal(value, written[f"stage{int(stage) + 1}.{name}"])
    model = tiny_model("llama")
    torch.manual_seed(0)  # as the trainer seeds the predictors' initial weights
    initial = sdtp_predictors(apply_sdtp(model, PRUNING))
    assert not torch.equal(ranks[0]["0.fc1.weight"], initial[0].fc1.weight.float())  # it trained
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 3


def _sdtp(*argv: str) -> int:
    return main(list(argv))


def test_cli_mark_then_train(workdir, tmp_path, capsys):
    common = ["--model", str(workdir / "model"), "--data", str(workdir / "data.jsonl"), "--start-layer", "2",
              "--layer-step", "2", "--num-sink", "2"]
    assert _sdtp("mark", *common, "--out", str(tmp_path / "marks"), "--records-per-shard", "5") == 0
    assert len(list((tmp_path / "marks").glob("saliency-*.safetensors"))) == 4
    train = [*common, "--keep-ratio", "0.7", "--max-steps", "2", "--batch-size", "4"]
    assert _sdtp("train", *train, "--out", str(tmp_path / "marked"), "--saliency", str(tmp_path / "marks")) == 0
    assert _sdtp("train", *train, "--out", str(tmp_path / "on_the_fly")) == 0
    # Training on the marking is training on saliency computed batch by batch (batched with other records, so
    # padded differently: equal up to rounding).
    logs = [_log(tmp_path / run) for run in ("marked", "on_the_fly")]
    assert len(logs[0]) == 2 and logs[0] == [pytest.approx(entry, rel=1e-5) for entry in logs[1]]

    model = apply_sdtp(tiny_model("llama"), str(tmp_path / "marked"))
    written = load_file(tmp_path / "marked" / WEIGHTS)
    assert torch.equal(sdtp_predictors(model)[2].fc2.bias, written["stage3.fc2.bias"])

    capsys.readouterr()
    marked_again = ["--out", str(tmp_path / "x"), "--saliency", str(tmp_path / "marks"), "--absolute"]
    assert _sdtp("train", *train, *marked_again) == 2
    assert "holds saliency marked with SaliencyOptions(absolute=False" in capsys.readouterr().err
    other_sinks = ["--out", str(tmp_path / "z"), "--saliency", str(tmp_path / "marks"), "--num-sink", "6"]
    assert _sdtp("train", *train, *other_sinks) == 2
    assert "was marked with num_sink = 2, this schedule has 6" in capsys.readouterr().err
    # Trained on a marking without repeating its options: what eval should mark with is the marking's own.
    assert _sdtp("mark", *common, "--out", str(tmp_path / "abs"), "--absolute", "--normalization", "maxabs") == 0
    assert _sdtp("train", *train, "--out", str(tmp_path / "on_abs"), "--saliency", str(tmp_path / "abs")) == 0
    assert read_predictors(tmp_path / "on_abs").saliency_options() == {"absolute": True, "normalization": "maxabs"}
    # Resumed with the marking's options given explicitly: the same run.
    assert _sdtp("train", *train, "--out", str(tmp_path / "on_abs"), "--saliency", str(tmp_path / "abs"),
                 "--absolute", "--normalization", "maxabs", "--resume") == 0
    capsys.readouterr()
    other_length = ["--out", str(tmp_path / "w"), "--saliency", str(tmp_path / "marks"), "--max-length", "30"]
    assert _sdtp("train", *train, *other_length) == 2  # refused before the first step, not at a truncated record
    assert "was marked with --max-length None, this run has 30" in capsys.readouterr().err
    with open(tmp_path / "bad.jsonl", "w") as f:
        f.write('{"input_ids": [1, 2]}\n{"tokens": [1, 2]}\n')
    assert _sdtp("mark", "--model", str(workdir / "model"), "--data", str(tmp_path / "bad.jsonl"),
                 "--out", str(tmp_path / "y")) == 2
    assert "bad.jsonl line 2: a record holds one of" in capsys.readouterr().err
