"""The frozen model sharded across 2 processes (FSDP over gloo, CPU), predictors data-parallel: the same predictors
after N steps as one process training the same global batches, to float32 rounding, and an exact resume; a sharded
`sdtp mark` writes the marking one process writes."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hf_tiny import PRUNING, training_workdir
from safetensors.torch import load_file

from sdtp_kernels.train.mark import mark
from sdtp_kernels.train.options import LossOptions, TrainOptions
from sdtp_kernels.train.shards import SaliencyShards
from sdtp_kernels.train.trainer import train

WEIGHTS = "sdtp_predictors.safetensors"


def _options(root, out, **overrides) -> TrainOptions:
    # A constant learning rate: 2 steps then 2 resumed are 4 steps straight whatever max_steps says.
    settings = dict(sdtp=PRUNING, batch_size=4, max_steps=4, save_every=2, lr=1e-2, lr_schedule="constant",
                    device="cpu", loss=LossOptions(task="kl"), checkpointing=True)
    return TrainOptions(str(root / "model"), str(root / "data.jsonl"), str(out), **{**settings, **overrides})


def _sharded_worker(rank: int, port: int, root) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # one group for the three runs (each would otherwise set up its own)
    sharded = dict(batch_size=2, shard=True)  # the same global batch of 4
    train(_options(root, root / "sharded", **sharded))
    train(_options(root, root / "resumed", max_steps=2, **sharded))
    train(_options(root, root / "resumed", resume=True, **sharded))
    mark(str(root / "model"), str(root / "data.jsonl"), str(root / "marks-sharded"), PRUNING, batch_size=6,
         records_per_shard=5, device="cpu", checkpointing=True, shard=True)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_sharded_processes_train_what_one_process_trains(tmp_path):
    root = training_workdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_worker, args=(port, root), nprocs=2)
    torch.set_num_threads(1)
    train(_options(root, root / "single"))

    single, sharded, resumed = (load_file(root / run / WEIGHTS) for run in ("single", "sharded", "resumed"))
    initial = torch.load(root / "single" / "checkpoint.pt", weights_only=True)  # (step 4; for the key names)
    assert set(single) == set(sharded) and len(initial["predictors"]) == len(single)
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], rtol=1e-5, atol=1e-6)
        assert torch.equal(resumed[key], sharded[key]), key  # resuming a sharded run is exact

    # 16 records in batches of 6: 3 batches taken in turn, so in the last round process 1 repeats one and drops it.
    mark(str(root / "model"), str(root / "data.jsonl"), str(root / "marks"), PRUNING, batch_size=6,
         records_per_shard=5, device="cpu")
    alone, together = SaliencyShards(str(root / "marks")), SaliencyShards(str(root / "marks-sharded"))
    assert len(alone) == len(together) == 16
    for record in range(16):
        assert torch.equal(alone[record][0], together[record][0])
        torch.testing.assert_close(together[record][1], alone[record][1], rtol=1e-4, atol=1e-5)
