"""Two real gloo ranks build the blended SIP dataset (Megatron's builder barriers between them)
and read disjoint micro-batches that together are the single-process sample order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.launch import free_port
from tests.test_data_helpers import EOD, random_docs, run_config, run_samples, write_docs

NUM_SAMPLES = 48


def _rank_main(rank: int, port: int, paths: list, out_dir: str) -> None:
    from megatron_sip.data.batching import iterate_micro_batches
    
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        source = run_samples(run_config(paths), eod_id=EOD, num_samples=NUM_SAMPLES)
        keys = [[int(d), int(i), int(s)]
                for batch in iterate_micro_batches(source, consumed_samples=0, micro_batch_size=3,
                                                   dp_rank=rank, dp_size=2, pad_id=EOD)
                for d, i, s in zip(batch.dataset_ids_B, batch.doc_ids_B, batch.splits_B)]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(keys))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.compat  # the builder's rank-0-first barrier changed between 0.16 and 0.19
def test_two_gloo_ranks_read_disjoint_shards_of_the_same_order(tmp_path: Path) -> None:
    paths = [0.4, write_docs(tmp_path / "a", random_docs(40, min_len=30, max_len=90, seed=1)),
             0.6, write_docs(tmp_path / "b", random_docs(40, min_len=30, max_len=90, seed=2))]
    # fork, not spawn: the children inherit the imported torch and Megatron-Core (seconds saved)
    mp.start_processes(_rank_main, args=(free_port(), paths, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    
    source = run_samples(run_config(paths), eod_id=EOD, num_samples=NUM_SAMPLES)
    expected = [[s.dataset_id, s.doc_id, s.split] for s in (source[i] for i in range(NUM_SAMPLES))]
    interleaved = [ranks[r][3 * k + j] for k in range(NUM_SAMPLES // 6) for r in range(2)
                   for j in range(3)]
    assert interleaved == expected
    assert not {tuple(k) for k in ranks[0]} & {tuple(k) for k in ranks[1]}
