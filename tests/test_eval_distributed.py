"""Two real processes (gloo on CPU): the prediction rows that each rank generated are gathered by
`PredictionCollector`, so every rank scores exactly the rows a single process would."""

import json
import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from regionvlm.evaluation.collectors import PredictionCollector

# rank 0 and rank 1 each generate part of the set; rank 1's last row repeats a sample, as a DistributedSampler
# pads the last batch
RANK_ROWS = {0: [{"id": 1, "text": "a"}, {"id": 3, "text": "c"}],
             1: [{"id": 2, "text": "b"}, {"id": 4, "text": "d é"}, {"id": 1, "text": "a"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        collector = PredictionCollector()
        collector.update(RANK_ROWS[rank])
        rows = collector.compute()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def test_rows_from_two_processes_are_gathered_once_each(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1]  # every rank scores the same rows
    assert sorted((r["id"], r["text"]) for r in seen[0]) == [(1, "a"), (2, "b"), (3, "c"), (4, "d é")]
