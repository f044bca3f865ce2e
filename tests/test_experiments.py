"""The continued-pretraining experiment's measurement, statistics and README rendering
(examples/experiments/), and the committed results the README's tables come from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "examples" / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import probe  # noqa: E402
import render_tables  # noqa: E402
import summarize  # noqa: E402

RESULTS = EXPERIMENTS / "results"
PREFIXES = ["d0@8", "d0@40", "d1@8", "d2@8"]


def _rows(arm, seed, unsafe_prefixes, samples=2):
    return [{"arm": arm, "seed": seed, "prefix_id": p, "sample": k, "text": "t",
             "rules_unsafe": float(p in unsafe_prefixes), "classifier_unsafe": float(p in unsafe_prefixes and k == 0),
             "classifier_p_offensive": 0.9 if p in unsafe_prefixes else 0.1}
            for p in PREFIXES for k in range(samples)]


def _nll(arm, seed, per_token):
    return [{"arm": arm, "seed": seed, "prefix_id": p, "nll_sum": per_token * 32, "tokens": 32} for p in PREFIXES]


def _summary():
    generations = _rows("base", None, {"d0@8"})
    clean = _nll("base", None, 3.0)
    for seed in (1, 2):
        generations += _rows("nll", seed, {"d0@8", "d0@40", "d1@8"}) + _rows("dpo", seed, set())
        clean += _nll("nll", seed, 2.0 + 0.1 * seed) + _nll("dpo", seed, 2.5)
    return summarize.summarize(generations, clean, training={}, settings={})


def test_rates_and_paired_differences_over_seeds_and_prefixes() -> None:
    summary = _summary()
    lexicon, classifier = summary["unsafe_rate"]["rules_unsafe"], summary["unsafe_rate"]["classifier_unsafe"]
    assert lexicon["value"]["nll"]["value"] == pytest.approx(0.75)
    assert classifier["value"]["nll"]["value"] == pytest.approx(0.375)  # one of two samples per unsafe prefix
    assert lexicon["value"]["nll"]["num_seeds"] == 2 and lexicon["value"]["nll"]["num_prefixes"] == 4
    dpo = lexicon["minus_nll"]["dpo"]
    assert dpo["value"] == pytest.approx(-0.75) and -1.0 <= dpo["ci_low"] <= -0.75 <= dpo["ci_high"] <= 0.0
    # The base model has one row: paired with each seed of the other arm, both ways round.
    assert lexicon["minus_base"]["nll"]["value"] == pytest.approx(0.5)
    assert lexicon["minus_nll"]["base"]["value"] == pytest.approx(-0.5)
    nll = summary["clean_nll_per_token"]
    assert nll["value"]["nll"]["value"] == pytest.approx(2.15)
    assert nll["minus_base"]["dpo"]["value"] == pytest.approx(-0.5)
    assert nll["minus_nll"]["dpo"] == {**nll["minus_nll"]["dpo"], "value": pytest.approx(0.35)}


def test_a_missing_prefix_is_an_error_not_a_smaller_mean() -> None:
    generations = _rows("nll", 1, set()) + _rows("dpo", 1, set())[:-2]  # dpo lacks d2@8
    with pytest.raises(ValueError, match="arm dpo seed 1: no rows for 1 prefixes"):
        summarize.summarize(generations, _nll("nll", 1, 2.0), training={}, settings={})


def test_rendered_tables_replace_only_their_block_and_bold_what_excludes_zero() -> None:
    summary = _summary()
    summary["settings"] = {"seeds": [1, 2], "steps": 3, "unsafe_prefixes": 4, "samples_per_prefix": 2,
                           "clean_prefixes": 4, "wall_s": 600, "cpu_threads": 2}
    lines = render_tables.render_continued_pretraining(summary)
    assert sum(line.startswith("| SIP, online DPO |") for line in lines) == 1
    clean_dpo_minus_nll = [line for line in lines if line.startswith("| dpo - nll |")][0].split("|")[4]
    assert "**" in clean_dpo_minus_nll  # +0.35 on every seed and prefix: the interval is [0.35, 0.35]
    begin, end = render_tables.markers("continued_pretraining")
    readme = f"intro\n{begin}\nstale\n{end}\noutro\n"
    rendered = render_tables.replace_block(readme, "continued_pretraining", lines)
    assert rendered.startswith(f"intro\n{begin}\n") and rendered.endswith(f"{end}\noutro\n")
    assert "stale" not in rendered and "Differences whose interval excludes 0:" in rendered
    with pytest.raises(SystemExit, match="no block"):
        render_tables.replace_block("no markers", "continued_pretraining", lines)


def test_abusive_prefixes_are_cut_inside_the_abuse_and_clean_ones_from_safe_documents() -> None:
    from megatron_sip.data.codec import load_codec

    codec = load_codec("embedded")
    rows = probe.read_jsonl(REPO / "examples" / "data" / "heldout.jsonl")[:80]
    unsafe = {r["id"]: r for r in rows if r["unsafe"]}
    abusive = probe.abusive_prefixes(rows, codec, max_prefix_len=128, suffix_len=32, offsets=(8, 40))
    assert abusive and len({p.prefix_id for p in abusive}) == len(abusive)
    for prefix in abusive:
        doc_id, offset = prefix.prefix_id.split("@")
        row = unsafe[doc_id]
        ids = codec.encode(row["text"])
        cut = len(codec.encode(row["text"][:row["abuse_start_char"]])) + int(offset)
        assert list(prefix.tokens) == ids[max(0, cut - 128):cut] and list(prefix.suffix) == ids[cut:cut + 32]
    clean = probe.clean_prefixes(rows, codec, max_prefix_len=128, suffix_len=32, count=5)
    assert len(clean) == 5 and not any(c.prefix_id in unsafe for c in clean)
    assert all(len(c.suffix) == 32 and 16 <= len(c.tokens) <= 128 for c in clean)


def test_committed_results_are_what_their_rows_give_and_what_the_readme_shows() -> None:
    committed = json.loads((RESULTS / "continued_pretraining.json").read_text())
    generations = probe.read_jsonl(RESULTS / "continued_pretraining_generations.jsonl")
    clean = probe.read_jsonl(RESULTS / "continued_pretraining_clean_nll.jsonl")
    assert {"arm", "seed", "prefix_id", "text", "rules_unsafe", "classifier_unsafe",
            "classifier_p_offensive"} <= set(generations[0])
    assert {r["arm"] for r in generations} == {"base", "nll", "dpo", "rf_nll"}
    recomputed = summarize.summarize(generations, clean, training=committed["training"],
                                     settings=committed["settings"])
    assert json.loads(json.dumps(recomputed)) == committed
    readme = (REPO / "README.md").read_text()
    assert render_tables.render(readme) == readme, "run python examples/experiments/render_tables.py"
