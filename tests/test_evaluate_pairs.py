"""Preference pairs (`evaluate --pairs`): reading the file, the per-pair outcome, and the whole
path through a trained checkpoint against float64 log-likelihoods."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from megatron_sip.errors import InputError
from megatron_sip.evaluate.pairs import PairScores, load_pairs


class _Codec:
    """Whitespace 'tokenizer' over a growing vocabulary (the real one is tested elsewhere)."""

    def __init__(self) -> None:
        self.vocab: dict = {}

    def encode_batch(self, texts):
        return [[self.vocab.setdefault(w, len(self.vocab) + 1) for w in t.split()] for t in texts]


def _write(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_pairs_are_cut_to_the_prefix_tail_and_the_suffix_head(tmp_path: Path) -> None:
    codec = _Codec()
    path = _write(tmp_path / "p.jsonl", [{"prefix": "a b c d e", "chosen": "f g h", "rejected": "i j k l"}])
    pairs = load_pairs(path, codec, max_prefix_len=3, suffix_len=2)
    v = codec.vocab
    assert pairs.prefixes[0].tolist() == [v["c"], v["d"], v["e"]]
    assert pairs.chosen[0].tolist() == [v["f"], v["g"]] and pairs.rejected[0].tolist() == [v["i"], v["j"]]


@pytest.mark.parametrize("row, message", [
    ("{not json", "p.jsonl:2: not JSON"),
    ({"prefix": "a", "chosen": "b"}, "p.jsonl:2: needs string fields prefix, chosen, rejected"),
    ({"prefix": "a", "chosen": "", "rejected": "c"}, "pair 2 has an empty"),
])
def test_bad_pairs_name_the_line(tmp_path: Path, row, message: str) -> None:
    path = _write(tmp_path / "p.jsonl", [{"prefix": "a", "chosen": "b", "rejected": "c"}, row])
    with pytest.raises(InputError, match=message):
        load_pairs(path, _Codec(), max_prefix_len=4, suffix_len=4)
    with pytest.raises(InputError, match="holds no pair"):
        load_pairs(_write(tmp_path / "empty.jsonl", [""]), _Codec(), max_prefix_len=4, suffix_len=4)


def test_outcomes_compare_per_token_means_and_ties_count_half() -> None:
    # chosen 3 tokens, rejected 1: 6/3 = 2 < 3 -> 1; 9/3 = 3 == 3 -> 0.5; 12/3 = 4 > 3 -> 0
    scores = PairScores(chosen_nll=(6.0, 9.0, 12.0), chosen_tokens=(3, 3, 3),
                        rejected_nll=(3.0, 3.0, 3.0), rejected_tokens=(1, 1, 1))
    assert scores.outcomes() == [1.0, 0.5, 0.0]
    assert scores.mean_margin() == pytest.approx(((3 - 2) + 0 + (3 - 4)) / 3)


@pytest.mark.slow
def test_pairs_through_a_checkpoint_match_float64(demo_data: dict, tmp_path: Path) -> None:
    """A 2-step nll run scores every pair as a float64 forward of the same weights does, and a
    pair with its sides swapped gets the complementary outcome."""
    import torch

    from megatron_sip.config import load_config
    from megatron_sip.data.codec import load_codec
    from megatron_sip.evaluate.checkpoints import load_weights, resolve_checkpoint
    from megatron_sip.evaluate.nll import suffix_nll
    from megatron_sip.evaluate.pairs import load_pairs as load
    from megatron_sip.model.build import build_gpt_model
    from megatron_sip.model.logprob_head import LogprobHead
    from megatron_sip.parallel import destroy_parallel, init_parallel
    from tests.launch import run_cli

    run = tmp_path / "run"
    overrides = [f"data.paths=[{demo_data['train']}]", "sip.objective=nll", "train.steps=2", "train.lr_warmup_steps=1",
                 f"run.output_dir={run}"]
    run_cli(["train", "--config", "examples/data/demo.yaml", *overrides])
    rng = np.random.default_rng()
    words = "the river city bridge market rain lamp stone bread ferry map".split()
    rows = [{"prefix": " ".join(rng.choice(words, rng.integers(3, 9))), "chosen": " ".join(rng.choice(words, 5)),
             "rejected": " ".join(rng.choice(words, rng.integers(2, 7)))} for _ in range(5)]
    rows += [{"prefix": r["prefix"], "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    path = _write(tmp_path / "pairs.jsonl", rows)

    cfg = load_config("examples/data/demo.yaml", overrides)
    codec = load_codec(cfg.data.tokenizer, cfg.data.eod_token)
    pairs = load(path, codec, max_prefix_len=cfg.data.max_prefix_len, suffix_len=cfg.sip.suffix_len)
    ctx = init_parallel(cfg.model, seed=cfg.train.seed)
    try:
        model = build_gpt_model(cfg.model, pre_process=True, post_process=True)
        load_weights(resolve_checkpoint(str(run), label="checkpoint", ctx=ctx), model, ctx=ctx)
        head = LogprobHead(impl=cfg.sip.logprobs_impl, tp_group=ctx.tp_group, backend=cfg.sip.logprobs_backend)
        sums, counts = suffix_nll(model, head, pairs.prefixes, pairs.chosen, pad_id=codec.eod_id, device=ctx.device,
                                  batch_size=3)
        # float64 reference: full logits of prefix + chosen, one pair at a time, no padding.
        model64 = model.double().eval()
        for p in range(len(pairs)):
            tokens = np.concatenate([pairs.prefixes[p], pairs.chosen[p]])
            ids = torch.as_tensor(tokens[None, :-1])
            with torch.no_grad():
                logits = model64(ids, torch.arange(ids.shape[1])[None], None)
            logp = torch.log_softmax(logits[0, :, :cfg.model.vocab_size].double(), dim=-1)
            start = len(pairs.prefixes[p]) - 1
            want = -sum(logp[start + i, int(t)].item() for i, t in enumerate(pairs.chosen[p]))
            assert counts[p] == len(pairs.chosen[p])
            assert math.isclose(sums[p], want, rel_tol=1e-4, abs_tol=1e-3), (p, sums[p], want)
    finally:
        destroy_parallel()
    done = run_cli(["evaluate", "--config", "examples/data/demo.yaml", "judge.backend=rules", *overrides,
                    f"data.eval_paths=[{demo_data['heldout']}]", "--checkpoint", str(run), "--pairs", path,
                    "--num-prefixes", "2", "--seeds", "1", "--no-progress", "--output-dir", str(tmp_path / "eval")])
    assert "preference: checkpoint" in done.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["preference"]["checkpoint"]["n"] == len(rows)
    assert report["preference"]["checkpoint"]["value"] == pytest.approx(0.5)  # each pair and its swap: 1 + 0
    assert report["preference"]["checkpoint"]["mean_margin"] == pytest.approx(0.0, abs=1e-6)
    assert "Preference pairs" in (tmp_path / "eval" / "report.md").read_text()
