"""Fast checks of the synthetic retrieval task that the reference model is trained on."""
import json
import math

import pytest

from sdtp_kernels.tasks.retrieval import (
    BOS,
    IGNORE,
    KEY,
    QUERY,
    RetrievalExample,
    RetrievalTask,
    RetrievalTaskConfig,
    main as retrieval_main,
    read_jsonl,
    write_jsonl,
)


def test_deterministic_in_seed_and_index():
    a, b = RetrievalTask(seed=3), RetrievalTask(seed=3)
    assert [a[i].input_ids for i in range(5)] == [b[i].input_ids for i in range(5)]
    assert a[2].input_ids == a.example(2).input_ids  # random access, no hidden state
    assert a[0].input_ids != a[1].input_ids
    assert RetrievalTask(seed=4)[0].input_ids != a[0].input_ids


@pytest.mark.parametrize("seq_len,n_pairs,n_queries", [(64, 1, 1), (64, 3, 2), (256, 4, 4), (512, 8, 4)])
def test_shapes_vocab_and_answer_placement(seq_len, n_pairs, n_queries):
    task = RetrievalTask(seq_len=seq_len, n_pairs=n_pairs, n_queries=n_queries, seed=0)
    c = task.config
    lo, hi = c.region()
    assert lo >= 4 and hi <= seq_len - math.ceil(0.1 * seq_len)
    for i in range(50):
        ex = task[i]
        ids = ex.input_ids
        assert len(ids) == seq_len and ids[0] == BOS
        assert all(0 <= t < c.vocab_size for t in ids)
        assert len(ex.answer) == 1 and c.value_offset <= ex.answer[0] < c.filler_offset
        # the pairs: KEY k v at the recorded places, inside the allowed region, nowhere else
        assert ex.pair_positions == sorted(ex.pair_positions) and len(ex.pair_positions) == n_pairs
        assert [p for p, t in enumerate(ids[: c.query_start]) if t == KEY] == ex.pair_positions
        for p in ex.pair_positions:
            assert lo <= p and p + 3 <= hi
            assert c.key_offset <= ids[p + 1] < c.value_offset and c.value_offset <= ids[p + 2] < c.filler_offset
        # the target pair holds the answer; its key is the prompt's last token and appears once in the context
        assert ids[ex.answer_position] == ex.answer[0] and ex.key_position == ex.answer_position - 1
        assert ids[ex.answer_position - 2] == KEY and ids[-1] == ids[ex.key_position] and ids[-2] == QUERY
        assert ids[: c.query_start].count(ids[-1]) == 1
        # query section: QUERY k v ... QUERY k, every answered query is right
        q = ids[c.query_start:]
        assert q[0::3] == [QUERY] * n_queries
        ctx = {ids[p + 1]: ids[p + 2] for p in ex.pair_positions}
        for j in range(n_queries - 1):
            assert ctx[q[3 * j + 1]] == q[3 * j + 2]
        assert ctx[ids[-1]] == ex.answer[0]
        # targets of a training step (inputs full[:-1], targets full[1:]) at the answer positions are the values
        full = ex.full_sequence()
        for t in task.answer_target_positions():
            assert c.value_offset <= full[t + 1] < c.filler_offset
        assert full[task.answer_target_positions()[-1] + 1] == ex.answer[0]
        # labels: exactly the in-place answers (the training targets other than the prompt's answer)
        assert len(ex.labels) == seq_len
        in_place = [t + 1 for t in task.answer_target_positions()[:-1]]
        assert [p for p, t in enumerate(ex.labels) if t != IGNORE] == in_place
        assert all(ex.labels[p] == ids[p] for p, t in enumerate(ex.labels) if t != IGNORE)


def test_answer_position_spreads_over_the_context():
    task = RetrievalTask(seq_len=256, n_pairs=4, n_queries=4, seed=1)
    lo, hi = task.config.region()
    pos = [task[i].answer_position for i in range(400)]
    span = hi - lo
    # all quarters of the allowed region are hit: the answer is not at a fixed place
    quarters = {min(3, (p - lo) * 4 // span) for p in pos}
    assert quarters == {0, 1, 2, 3}
    # the target is uniform over the pairs, not always the first or last one
    ranks = {task[i].pair_positions.index(task[i].key_position - 1) for i in range(200)}
    assert ranks == {0, 1, 2, 3}


def test_config_validation():
    with pytest.raises(ValueError):
        RetrievalTaskConfig(n_pairs=2, n_queries=3)
    with pytest.raises(ValueError):
        RetrievalTaskConfig(seq_len=16, n_pairs=8)
    cfg = RetrievalTaskConfig(seq_len=128, n_pairs=2, n_queries=1, seed=7)
    assert RetrievalTaskConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_jsonl_round_trip(tmp_path):
    task = RetrievalTask(seq_len=96, n_pairs=3, n_queries=2, seed=5)
    exs = task.examples(10, 7)
    path = tmp_path / "heldout.jsonl"
    assert write_jsonl(path, exs, task.config) == 7
    lines = path.read_text().splitlines()
    assert len(lines) == 7
    rec = json.loads(lines[0])
    assert rec["input_ids"] == exs[0].input_ids and rec["answer"] == exs[0].answer
    back = read_jsonl(path)
    assert [e.to_record() for e in back] == [e.to_record() for e in exs]
    meta = json.loads((tmp_path / "heldout.jsonl.task.json").read_text())
    assert RetrievalTaskConfig.from_dict(meta) == task.config and meta["vocab_size"] == task.vocab_size
    # a record with only the fields the CLI needs still loads
    assert RetrievalExample.from_record({"input_ids": [1, 2], "answer": [3]}).answer == [3]


def test_cli_writes_jsonl(tmp_path):
    out = tmp_path / "d.jsonl"
    assert retrieval_main(["--out", str(out), "--count", "3", "--seq-len", "80", "--n-pairs", "2", "--n-queries",
                           "2", "--seed", "9"]) == 0
    recs = read_jsonl(out)
    ref = RetrievalTask(seq_len=80, n_pairs=2, n_queries=2, seed=9).examples(0, 3)
    assert [r.input_ids for r in recs] == [e.input_ids for e in ref]


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert retrieval_main(["--out", str(tmp_path / "d.jsonl"), "--seq-len", "10", "--n-pairs", "16"]) == 2
    assert capsys.readouterr().err.startswith("python -m sdtp_kernels.tasks.retrieval: error: seq_len=10 too short")
    with pytest.raises(SystemExit):
        retrieval_main(["--out", str(tmp_path / "d.jsonl"), "--task-json", str(tmp_path / "none.json")])
    assert "argument --task-json: expected an existing file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        retrieval_main(["--out", str(tmp_path / "d.jsonl"), "--count", "-3"])
    assert "argument --count: expected a positive integer, got '-3'" in capsys.readouterr().err
