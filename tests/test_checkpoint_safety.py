"""Checkpoints lose nothing and run no code: plain state loaded with weights_only, planted pickle
payloads refused by resume and evaluate, keep-last by save order, abandoned timelines moved aside,
a failed write on one rank stops every rank, and a SIGKILL mid-checkpoint resumes exactly."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

from tests.launch import REPO_ROOT, cli_env, free_port, read_metrics, run_cli

# A one-layer model on synthetic documents: each run is mostly process start-up.
TINY = ["sip.objective=nll", "train.micro_batch_size=1", "train.global_batch_size=2", "model.vocab_size=512",
        "model.hidden_size=32", "model.ffn_hidden_size=64", "model.num_layers=1", "model.seq_length=64",
        "data.max_prefix_len=24", "sip.suffix_len=8", "train.lr_warmup_steps=1"]
WORKER = str(REPO_ROOT / "tests" / "checkpoint_fault_worker.py")


class Payload:
    """Unpickling this creates `marker`: proof that a load ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _train(output_dir: Path, *overrides: str, resume: str = "") -> subprocess.CompletedProcess:
    return run_cli(["train", *TINY, f"run.output_dir={output_dir}", *overrides, *([resume] if resume else [])])


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2 and 4 (keep_last=2)."""
    run = tmp_path_factory.mktemp("saved") / "run"
    _train(run, "train.steps=4", "train.save_every=2", "train.keep_last=2")
    return run


def _copy_run(saved_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    return run


def _error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def test_checkpoint_state_is_plain_and_loads_with_weights_only(saved_run: Path) -> None:
    checkpoint = saved_run / "checkpoints" / "step_00000004"
    trainer = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert trainer["step"] == 4 and trainer["consumed_samples"] == 8
    rank = torch.load(checkpoint / "ranks" / "rank_00000.pt", weights_only=True)
    assert isinstance(rank["rng"]["numpy"]["keys"], torch.Tensor)
    assert json.loads((saved_run / "checkpoints" / "saved.json").read_text()) == {
        "saved": ["step_00000002", "step_00000004"]}


def test_planted_payload_in_any_file_is_refused_without_running(saved_run: Path, tmp_path: Path) -> None:
    from megatron_sip.errors import InputError
    from megatron_sip.train.plain_state import verify_checkpoint_files

    live = tmp_path / "live.pt"
    torch.save({"payload": Payload(tmp_path / "live_marker")}, live)
    torch.load(live, weights_only=False)
    assert (tmp_path / "live_marker").exists(), "the payload must be live for this test to mean anything"

    source = saved_run / "checkpoints" / "step_00000004"
    targets = sorted(p.relative_to(source) for p in source.rglob("*.pt")) + [Path(".metadata")]
    # common.pt is Megatron-Core 0.16's (0.19 keeps that state elsewhere); ours are always there.
    assert {str(t) for t in targets} >= {"trainer_state.pt", "ranks/rank_00000.pt", ".metadata"}
    for index, target in enumerate(targets):
        checkpoint = tmp_path / f"ckpt{index}"
        shutil.copytree(source, checkpoint)
        marker = tmp_path / f"marker{index}"
        if target.suffix == ".pt":
            torch.save({"step": 4, "payload": Payload(marker)}, checkpoint / target)
        else:
            (checkpoint / target).write_bytes(pickle.dumps([Payload(marker)]))
        with pytest.raises(InputError, match="refused to load") as caught:
            verify_checkpoint_files(checkpoint)
        assert str(checkpoint / target) in str(caught.value) and "\n" not in str(caught.value)
        assert not marker.exists(), target


def test_planted_payload_in_a_distcp_byte_item_is_refused(saved_run: Path, tmp_path: Path) -> None:
    """torch.distributed.checkpoint unpickles byte items (`_extra_state`) with weights_only=False."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from megatron_sip.errors import InputError
    from megatron_sip.train.plain_state import verify_checkpoint_files

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(saved_run / "checkpoints" / "step_00000004", checkpoint)
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())
    index = next(i for i in metadata.storage_data
                 if isinstance(metadata.state_dict_metadata[i.fqn], BytesStorageMetadata))
    payload = io.BytesIO()
    torch.save(Payload(tmp_path / "marker"), payload)
    (checkpoint / "planted.distcp").write_bytes(payload.getvalue())
    info = metadata.storage_data[index]
    metadata.storage_data[index] = type(info)(relative_path="planted.distcp", offset=0,
                                              length=len(payload.getvalue()))
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(InputError, match=f"byte item {index.fqn}"):
        verify_checkpoint_files(checkpoint)
    assert not (tmp_path / "marker").exists()


@pytest.mark.slow
def test_resume_and_evaluate_refuse_a_planted_payload(saved_run: Path, tmp_path: Path) -> None:
    run = _copy_run(saved_run, tmp_path)
    checkpoint = run / "checkpoints" / "step_00000004"
    marker = tmp_path / "marker"
    torch.save({"optimizer": Payload(marker)}, checkpoint / "common.pt")  # Megatron's own file
    command = [sys.executable, "-m", "megatron_sip"]
    resumed = subprocess.run([*command, "train", *TINY, "train.steps=6", f"run.output_dir={run}", "--resume"],
                             cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    evaluated = subprocess.run([*command, "evaluate", *TINY, "judge.backend=rules", "--checkpoint", str(run),
                                "--no-progress"], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                               timeout=300)
    for done, name in ((resumed, "train"), (evaluated, "evaluate")):
        assert done.returncode == 2, done.stderr[-3000:]
        errors = _error_lines(done.stderr)
        assert len(errors) == 1 and errors[0].startswith(f"megatron-sip {name}: error: "), done.stderr[-3000:]
        assert f"{checkpoint / 'common.pt'}: refused to load" in errors[0]
    assert not marker.exists()


@pytest.mark.slow
def test_keep_last_one_and_resume_from_an_older_step(saved_run: Path, tmp_path: Path) -> None:
    run = _copy_run(saved_run, tmp_path)
    root = run / "checkpoints"
    _train(run, "train.steps=3", "train.keep_last=1", resume=f"--resume={root / 'step_00000002'}")
    # The abandoned timeline's step 4 is moved aside, not deleted; keep_last=1 keeps the new step 3.
    assert sorted(p.name for p in root.iterdir()) == [
        "abandoned_after_step_00000002", "latest", "saved.json", "step_00000003"]
    assert (root / "abandoned_after_step_00000002" / "step_00000004" / "trainer_state.pt").is_file()
    assert (root / "latest").read_text().strip() == "step_00000003"
    assert json.loads((root / "saved.json").read_text()) == {"saved": ["step_00000003"]}
    state = torch.load(root / "step_00000003" / "trainer_state.pt", weights_only=True)
    assert (state["step"], state["consumed_samples"]) == (3, 6)


@pytest.mark.slow
def test_a_rank_that_cannot_write_stops_every_rank(tmp_path: Path) -> None:
    # Two ranks started the way torchrun starts them, but without torchrun, which would kill the
    # other rank as soon as one exits: here each rank must stop on its own, with its own line.
    port = free_port()
    ranks = []
    for rank in range(2):
        env = {**cli_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        command = [sys.executable, WORKER, "--fault", "enospc", "--rank", "1", "--step", "2", "--", "train", *TINY,
                   "train.steps=3", "train.save_every=1", f"run.output_dir={tmp_path}"]
        ranks.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True))
    stderrs = [process.communicate(timeout=240)[1] for process in ranks]
    rank_file = tmp_path / "checkpoints" / "step_00000002.partial" / "ranks" / "rank_00001.pt"
    for process, stderr in zip(ranks, stderrs):
        assert process.returncode == 2, stderr[-3000:]
        errors = _error_lines(stderr)
        assert len(errors) == 1, stderr[-3000:]
        assert f"checkpoint at step 2 not saved: rank 1 could not write {rank_file}" in errors[0]
    assert "No space left on device" in _error_lines(stderrs[1])[0]
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "saved.json", "step_00000001"]
    assert (root / "latest").read_text().strip() == "step_00000001"


@pytest.mark.slow
def test_sigkill_mid_checkpoint_resumes_from_the_last_complete_one(tmp_path: Path) -> None:
    command = [sys.executable, WORKER, "--fault", "sigkill", "--rank", "0", "--step", "4", "--",
               "train", *TINY, "train.steps=5", "train.save_every=2", f"run.output_dir={tmp_path}"]
    log = tmp_path / "killed.log"
    with log.open("w") as stderr:
        # Its own process group: Megatron's checkpoint writer starts a multiprocessing Manager,
        # which a SIGKILLed parent leaves behind (holding stderr) until the group is killed.
        killed = subprocess.Popen(command, cwd=REPO_ROOT, env=cli_env(), stderr=stderr, start_new_session=True)
        try:
            killed.wait(timeout=240)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(killed.pid, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    root = tmp_path / "checkpoints"
    assert (root / "step_00000004.partial" / "ranks" / "rank_00000.pt").is_file()  # torn, never published
    assert (root / "latest").read_text().strip() == "step_00000002"
    before = {r["step"]: r for r in read_metrics(tmp_path)}
    assert sorted(before) == [1, 2, 3, 4]

    _train(tmp_path, "train.steps=5", "train.save_every=2", resume="--resume")
    records = read_metrics(tmp_path)
    resumed = {r["step"]: r for r in records[4:]}
    assert sorted(resumed) == [3, 4, 5]
    for step in (3, 4):  # the same steps again, bit for bit, from the same samples
        assert resumed[step]["loss"] == before[step]["loss"]
        assert resumed[step]["consumed_samples"] == before[step]["consumed_samples"] == 2 * step
    assert not list(root.glob("*.partial"))
    assert (root / "latest").read_text().strip() == "step_00000005"
