"""The real slurm/ scripts on a real (local) SLURM cluster: het job with sidecars, health gate,
pre-emption and requeue, rewrite job array.

The cluster (tests/slurm_cluster.py) is munge + slurmctld + 3 slurmd on this machine; the
sidecar is `megatron-sip serve` over the embedded model, the trainer the tiny CPU config with the
nll objective. Every daemon is stopped by PID when the module ends, whatever the outcome.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from megatron_sip.train.metrics import read_metrics
from tests.slurm_cluster import REPO_ROOT, JobInfo, LocalSlurm, SlurmUnavailable, free_ports, start_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

HETJOB = REPO_ROOT / "slurm" / "sip_hetjob.sbatch"
REWRITE_ARRAY = REPO_ROOT / "slurm" / "sip_rewrite_array.sbatch"
TINY_CONFIG = REPO_ROOT / "examples" / "tiny_cpu.yaml"
SERVE_COMMAND = 'megatron-sip serve --model embedded --host 0.0.0.0 --port "$SIP_SERVE_PORT"'
# Components as the tests ask for them: no GPUs on this cluster, 2 trainer nodes, 1 judge node.
NO_GPUS = "--gpus-per-node=0"
JOB_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def cluster():
    try:
        local = start_cluster(num_nodes=3)
    except SlurmUnavailable as exc:
        pytest.skip(f"no local SLURM cluster: {exc}")
    try:
        yield local
    finally:
        local.stop()
        shutil.rmtree(local.root, ignore_errors=True)


def _job_env(**settings: str) -> Dict[str, str]:
    """What a job inherits (sbatch exports the submitter's environment): this venv first on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    return {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "SIP_PYTHON": sys.executable,
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **settings}


@dataclass
class HetRun:
    job_id: str
    batch_log: Path
    log_dir: Path
    output_dir: Path
    judge_port: int

    def batch_text(self) -> str:
        return self.batch_log.read_text(errors="replace") if self.batch_log.is_file() else ""

    def metrics(self) -> List[dict]:
        path = self.output_dir / "metrics.jsonl"
        return read_metrics(path) if path.is_file() else []

    def explain(self) -> str:
        """Everything worth reading when an assertion fails."""
        parts = [f"--- batch log\n{self.batch_text()}"]
        for log in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)


# SIP judged by the sidecar: safety on the suffix and one rollout, label read from the first token.
SIP_JUDGED = ("sip.objective=dpo sip.num_rollouts=1 sip.candidates=[suffix,rollouts] judge.criteria=[safety] "
              "judge.decision=direct judge.logprobs=true judge.top_logprobs=20 judge.request_timeout_s=120 "
              "train.micro_batch_size=1 train.global_batch_size=2")
API_KEY = "het-job-key-5c1e"


def _submit_hetjob(cluster: LocalSlurm, tmp_path: Path, *, steps: int, judge_cmd: str,
                   extra_env: Optional[Dict[str, str]] = None, objective: str = "sip.objective=nll") -> HetRun:
    judge_port, rdzv_port = free_ports(2)
    # A space in the output path: overrides built from SIP_OVERRIDES keep quoted values whole.
    run = HetRun(job_id="", batch_log=tmp_path / "batch.out", log_dir=tmp_path / "logs",
                 output_dir=tmp_path / "run dir", judge_port=judge_port)
    settings = {
        "SIP_CONFIG": str(TINY_CONFIG),
        "SIP_OVERRIDES": f"{objective} train.steps={steps} train.log_every=1 'run.output_dir={run.output_dir}'",
        "SIP_LOG_DIR": str(run.log_dir), "SIP_JUDGE_CMD": judge_cmd, "SIP_JUDGE_PORT": str(judge_port),
        "SIP_RDZV_PORT": str(rdzv_port), "SIP_STOP_GRACE_S": "10", "SIP_HEALTH_POLL_S": "0.5"}
    env = _job_env(**{**settings, **(extra_env or {})})
    run.job_id = cluster.submit(f"--output={run.batch_log}", "--nodes=2", NO_GPUS, ":", "--nodes=1", NO_GPUS,
                                str(HETJOB), env=env)
    return run


@dataclass
class PreemptedRun:
    """One het job, pre-empted mid-training and run to the end."""

    run: HetRun
    info: JobInfo
    steps: int


@pytest.fixture(scope="module")
def hetjob(cluster: LocalSlurm, tmp_path_factory: pytest.TempPathFactory) -> PreemptedRun:
    """The trainer (2 nodes) and a `megatron-sip serve` judge (1 node) as one het job. Once two
    steps are logged, the job gets what SLURM sends at --signal=B:USR1@600, and must checkpoint,
    requeue itself and finish from the checkpoint."""
    steps = 5
    tmp_path = tmp_path_factory.mktemp("hetjob")
    # The sidecar's key comes from a file (in a folder whose name needs quoting in an override).
    key_file = tmp_path / "keys, here]" / "judge.key"
    key_file.parent.mkdir()
    key_file.write_text(API_KEY + "\n")
    run = _submit_hetjob(cluster, tmp_path, steps=steps, judge_cmd=SERVE_COMMAND, objective=SIP_JUDGED,
                         extra_env={"SIP_JUDGE_API_KEY_FILE": str(key_file)})
    _wait_for(lambda: len(run.metrics()) >= 2, timeout_s=JOB_TIMEOUT_S, what="two training steps", run=run)
    cluster.run("scancel", "--batch", "--signal=USR1", run.job_id)
    info = cluster.wait(run.job_id, timeout_s=2 * JOB_TIMEOUT_S)
    return PreemptedRun(run, info, steps)


def test_hetjob_ran_both_components(hetjob: PreemptedRun) -> None:
    run, batch = hetjob.run, hetjob.run.batch_text()
    assert (hetjob.info.state, hetjob.info.exit_code) == ("COMPLETED", "0:0"), run.explain()
    # The judge on n3 (component 1), one torchrun on each of n1 and n2 (component 0).
    assert "starting 1 judge server(s) on n3 (component 1" in batch, run.explain()
    assert "trainer: 2 node(s) x 1 process(es) (n1 n2), rendezvous n1" in batch, run.explain()
    assert {p.name for p in run.log_dir.glob("*.log")} == {"judge-n3.log", "trainer-n1.log", "trainer-n2.log"}
    assert "ready at" in (run.log_dir / "judge-n3.log").read_text(), run.explain()


def test_health_gate_opened_before_training(hetjob: PreemptedRun) -> None:
    run, batch = hetjob.run, hetjob.run.batch_text()
    judge_url = f"http://n3:{run.judge_port}"
    assert batch.index("health gate passed") < batch.index("trainer command:"), run.explain()
    # The sidecar's URL reached the trainer as an override, and the sidecar was stopped after it.
    assert f"judge.endpoints=['{judge_url}']" in batch
    assert f"- {judge_url}" in (run.output_dir / "config.yaml").read_text()
    assert (batch.rindex("trainer exited with status 0") < batch.rindex("sidecars stopped")
            < batch.rindex("training finished"))


def test_training_finished_with_metrics_and_checkpoint(hetjob: PreemptedRun) -> None:
    run = hetjob.run
    assert [record["step"] for record in run.metrics()] == list(range(1, hetjob.steps + 1)), run.explain()
    assert (run.output_dir / "checkpoints" / f"step_{hetjob.steps:08d}").is_dir(), run.explain()


def test_the_sidecar_judged_every_step_with_its_key_from_a_file(hetjob: PreemptedRun) -> None:
    run = hetjob.run
    metrics = run.metrics()
    assert metrics and all(m["judge_calls"] > 0 and m["judge_failed_calls"] == 0 for m in metrics), run.explain()
    assert sum(m["groups_preference"] for m in metrics) > 0, run.explain()
    # The key reached the sidecar (it answered the trainer) and the trainer, through the file only.
    config = (run.output_dir / "config.yaml").read_text()
    assert "api_key_file" in config and "judge.key" in config
    logs = [run.batch_text(), config, *(log.read_text(errors="replace") for log in run.log_dir.glob("*.log"))]
    assert not any(API_KEY in text for text in logs), "the API key was written to a log"
    assert "API key required" in (run.log_dir / "judge-n3.log").read_text()


def test_preempted_job_checkpointed_and_resumed(hetjob: PreemptedRun) -> None:
    run, batch = hetjob.run, hetjob.run.batch_text()
    assert hetjob.info.restarts == 1, run.explain()
    assert "received SIGUSR1" in batch and f"requeueing job {run.job_id}" in batch, run.explain()
    assert "restart 1: the trainer resumes from the newest checkpoint" in batch
    # The rendezvous numbers the ranks afresh on every attempt: rank 0 (which logs) may be on n2.
    trainer_log = "".join(path.read_text() for path in sorted(run.log_dir.glob("trainer-*.log")))
    assert "SIGUSR1 received: saving a checkpoint" in trainer_log, run.explain()
    resumed = [line for line in trainer_log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1, run.explain()
    stopped_at = int(resumed[0].rsplit("(step ", 1)[1].rstrip(")"))
    # The first attempt ran 1..stopped_at, the requeued one stopped_at+1..steps: no step twice
    # (test_training_finished_with_metrics_and_checkpoint checks the whole sequence).
    assert 2 <= stopped_at < hetjob.steps, run.explain()


@pytest.mark.parametrize("judge_cmd, message", [
    ("sleep 300", "health gate timed out after 3 s; not healthy: http://n3:"),
    ("exit 3", "a judge sidecar exited before it was healthy"),
])
def test_health_gate_fails_clearly(cluster: LocalSlurm, tmp_path: Path, judge_cmd: str, message: str) -> None:
    run = _submit_hetjob(cluster, tmp_path, steps=3, judge_cmd=judge_cmd, extra_env={"SIP_HEALTH_TIMEOUT_S": "3"})
    info = cluster.wait(run.job_id, timeout_s=60)
    batch = run.batch_text()
    assert info.state == "FAILED", run.explain()
    assert message in batch, run.explain()
    assert "sidecars not healthy; training not started" in batch
    assert "sidecars stopped" in batch
    assert not list(run.log_dir.glob("trainer-*.log")) and not run.output_dir.exists()


def test_invalid_config_fails_before_any_sidecar_starts(cluster: LocalSlurm, tmp_path: Path) -> None:
    run = _submit_hetjob(cluster, tmp_path, steps=3, judge_cmd="sleep 300",
                         extra_env={"SIP_OVERRIDES": "sip.objective=nll train.stepz=3"})
    info = cluster.wait(run.job_id, timeout_s=60)
    batch = run.batch_text()
    assert info.state == "FAILED", run.explain()
    assert "train.stepz: unknown key" in batch and "the config does not validate" in batch, run.explain()
    assert "judge server" not in batch and not list(run.log_dir.glob("*.log"))


def test_rewrite_array_covers_every_shard(cluster: LocalSlurm, tmp_path: Path) -> None:
    shards = [tmp_path / "data" / f"shard {i},x]" for i in range(2)]  # quoting: space, comma, bracket
    for index, prefix in enumerate(shards):
        _write_random_dataset(prefix, seed=index)
    shards_file = tmp_path / "shards.txt"
    shards_file.write_text("# one dataset prefix per line\n" + "".join(f"{p}\n" for p in shards) + "\n")
    log_dir = tmp_path / "logs"
    env = _job_env(SIP_CONFIG=str(TINY_CONFIG), SIP_SHARDS_FILE=str(shards_file), SIP_LOG_DIR=str(log_dir),
                   SIP_REWRITER_SERVE="0", SIP_OVERRIDES="rewriter.backend=rules", SIP_REWRITE_ARGS="--count 8")
    job_id = cluster.submit(f"--output={tmp_path}/array-%a.out", "--array=0-2", NO_GPUS, str(REWRITE_ARRAY), env=env)
    for task in range(3):
        info = cluster.wait(f"{job_id}_{task}", timeout_s=JOB_TIMEOUT_S)
        output = (tmp_path / f"array-{task}.out").read_text()
        assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), output
    assert "has no shard (SIP_SHARDS_FILE lists 2); nothing to do" in (tmp_path / "array-2.out").read_text()
    # One task per shard, each on its own node, each filling its shard's rewrite store.
    for task, prefix in enumerate(shards):
        assert f"shard {prefix}" in (tmp_path / f"array-{task}.out").read_text()
        client_logs = list(log_dir.glob(f"client-{task}-n*.log"))
        assert len(client_logs) == 1
        assert Path(f"{prefix}.rewrites").is_dir(), client_logs[0].read_text()


def _write_random_dataset(prefix: Path, *, seed: int, num_docs: int = 12, doc_len: int = 200) -> None:
    """A small indexed dataset of random SmolLM2 token ids (no tokenizer needed), EOD-terminated."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(num_docs):
        tokens = np.append(rng.integers(100, 20000, doc_len), 0)  # 0 = <|endoftext|>
        builder.add_document(torch.from_numpy(tokens.astype(np.int64)), [len(tokens)])
    builder.finalize(f"{prefix}.idx")


def _wait_for(condition, *, timeout_s: float, what: str, run: HetRun) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s:.0f} s\n{run.explain()}")
        time.sleep(0.2)
