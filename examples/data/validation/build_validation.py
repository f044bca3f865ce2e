#!/usr/bin/env python3
"""Build the judge validation set: labelled groups cut from the demo corpus, one file per criterion.

    python examples/data/validation/build_validation.py [--seed 17] [--groups 80]

Deterministic: the same seed and corpus give byte-identical files. Each group is a prefix and two
continuations, one labelled better (`preferred`) than the other (`dispreferred`):

- safety.jsonl: an abusive document's calm opening; the corpus's own (safe) next two sentences vs
  the first two abusive sentences of the same document.
- quality.jsonl: a safe document's opening; its true next three sentences vs the same words
  shuffled (every other group) or its first sentence repeated to about the same length.
- factuality.jsonl: an encyclopedic document's opening with its true next sentences as the
  reference; a fact of the document stated as in facts.json vs the same sentence with the value of
  another entity (a wrong year, population, length, place or industry).

Records: {"id", "criterion", "corruption", "source" (the corpus document), "prefix",
"candidates" [{"text", "kind"}], "reference", "preferred", "dispreferred"}, the input of
`megatron-sip judge` (docs/judge_validation.md). Candidate order is drawn per group.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional

DATA_DIR = Path(__file__).resolve().parents[1]
_SENTENCE_END = re.compile(r'(?<=[.!?"])\s+(?=["A-Z])')
PREFIX_SENTENCES = (2, 5)
"""Fewest and most sentences of a prefix (short prompts keep a CPU judge fast)."""
QUALITY_SENTENCES = 3
FACT_ATTRIBUTES = ("founded", "population", "length_km", "birth_year", "death_year", "country",
                   "river", "source", "mouth", "industry")
"""Facts whose value can be swapped for another entity's to make a contradiction (not the
profession: its sentence's article would give the swap away)."""


def sentences(text: str) -> List[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def load_documents() -> List[dict]:
    """Held-out documents first, then train: the validation set uses held-out text where it can."""
    docs = []
    for split in ("heldout", "train"):
        with (DATA_DIR / f"{split}.jsonl").open() as lines:
            docs.extend(json.loads(line) for line in lines if line.strip())
    return docs


def labelled_group(rng: random.Random, *, criterion: str, corruption: str, doc: dict, prefix: List[str],
                   good: str, bad: str, reference: str) -> dict:
    """A record with the two continuations in a random order."""
    good_first = rng.random() < 0.5
    good_kind = "suffix" if good == reference else "rollout"
    good_item, bad_item = {"text": " " + good, "kind": good_kind}, {"text": " " + bad, "kind": "rollout"}
    candidates = [good_item, bad_item] if good_first else [bad_item, good_item]
    return {"criterion": criterion, "corruption": corruption, "source": doc["id"], "prefix": " ".join(prefix),
            "candidates": candidates, "reference": " " + reference,
            "preferred": 0 if good_first else 1, "dispreferred": 1 if good_first else 0}


def prefix_of(rng: random.Random, opening: List[str]) -> List[str]:
    """The last 2-5 sentences of `opening` (the document's text up to the cut)."""
    return opening[-rng.randint(*PREFIX_SENTENCES):]


def safety_groups(rng: random.Random, docs: List[dict]) -> Iterator[dict]:
    for doc in docs:
        if doc["kind"] != "abuse_after_safe_prefix":
            continue
        calm = sentences(doc["text"][:doc["abuse_start_char"]])
        abusive = sentences(doc["text"][doc["abuse_start_char"]:])
        if len(calm) < PREFIX_SENTENCES[0] + 2 or len(abusive) < 2:
            continue
        safe = " ".join(calm[-2:])
        yield labelled_group(rng, criterion="safety", corruption="abusive", doc=doc,
                             prefix=prefix_of(rng, calm[:-2]), good=safe, bad=" ".join(abusive[:2]),
                             reference=safe)


def quality_groups(rng: random.Random, docs: List[dict]) -> Iterator[dict]:
    corruptions = itertools.cycle(["shuffled", "repeated"])
    for doc in docs:
        if doc["unsafe"]:
            continue
        parts = sentences(doc["text"])
        if len(parts) < PREFIX_SENTENCES[0] + QUALITY_SENTENCES:
            continue
        cut = rng.randint(PREFIX_SENTENCES[0], len(parts) - QUALITY_SENTENCES)
        true = " ".join(parts[cut:cut + QUALITY_SENTENCES])
        corruption = next(corruptions)
        bad = shuffled_words(rng, true) if corruption == "shuffled" else repeated_sentence(parts[cut], len(true))
        yield labelled_group(rng, criterion="quality", corruption=corruption, doc=doc,
                             prefix=prefix_of(rng, parts[:cut]), good=true, bad=bad, reference=true)


def shuffled_words(rng: random.Random, text: str) -> str:
    words = text.split()
    order = list(words)
    while order == words:
        rng.shuffle(order)
    return " ".join(order)


def repeated_sentence(sentence: str, num_chars: int) -> str:
    """`sentence` repeated until the text is at least `num_chars` long."""
    repeats = max(2, -(-num_chars // (len(sentence) + 1)))
    return " ".join([sentence] * repeats)


def factuality_groups(rng: random.Random, docs: List[dict], facts: List[dict]) -> Iterator[dict]:
    by_id = {f["id"]: f for f in facts}
    values: Dict[str, List] = {}
    for fact in facts:
        values.setdefault(fact["attribute"], []).append(fact["value"])
    for doc in docs:
        if not doc["kind"].startswith("encyclopedic"):
            continue
        parts = sentences(doc["text"])
        if len(parts) < PREFIX_SENTENCES[0] + 2:
            continue
        cut = rng.randint(PREFIX_SENTENCES[0], len(parts) - 2)
        prefix, reference = prefix_of(rng, parts[:cut]), " ".join(parts[cut:cut + 2])
        context = " ".join(prefix) + " " + reference
        checkable = [by_id[i] for i in doc["facts"]
                     if by_id[i]["attribute"] in FACT_ATTRIBUTES and rendered(by_id[i], by_id[i]["value"]) in context]
        if not checkable:
            continue
        fact = rng.choice(checkable)
        wrong = contradicting(rng, fact, values[fact["attribute"]])
        if wrong is None:
            continue
        yield labelled_group(rng, criterion="factuality", corruption=f"wrong_{fact['attribute']}", doc=doc,
                             prefix=prefix, good=fact["sentence"], bad=wrong, reference=reference)


def rendered(fact: dict, value) -> str:
    """The value as the corpus writes it (populations with thousands separators)."""
    return f"{value:,}" if fact["attribute"] == "population" else str(value)


def contradicting(rng: random.Random, fact: dict, pool: List) -> Optional[str]:
    """The fact's sentence with another entity's (different) value of the same attribute."""
    others = sorted({v for v in pool if v != fact["value"]}, key=str)
    if not others:
        return None
    old = rendered(fact, fact["value"])
    if fact["sentence"].count(old) != 1:
        return None
    return fact["sentence"].replace(old, rendered(fact, rng.choice(others)))


def take(groups: Iterator[dict], count: int, criterion: str) -> List[dict]:
    chosen = []
    for group in groups:
        group["id"] = f"{criterion}-{len(chosen):03d}"
        chosen.append(group)
        if len(chosen) == count:
            return chosen
    raise SystemExit(f"only {len(chosen)} {criterion} groups in the corpus, {count} asked")


def build(seed: int, count: int) -> Dict[str, List[dict]]:
    docs = load_documents()
    facts = json.loads((DATA_DIR / "facts.json").read_text())
    # One shuffle of the documents per criterion, each from its own stream: adding a criterion
    # or changing one's count does not change the others' groups.
    streams = {name: random.Random(f"{seed}-{name}") for name in ("safety", "quality", "factuality")}
    ordered = {name: sorted(docs, key=lambda d: (d["id"].startswith("train"), stream.random()))
               for name, stream in streams.items()}
    return {
        "safety": take(safety_groups(streams["safety"], ordered["safety"]), count, "safety"),
        "quality": take(quality_groups(streams["quality"], ordered["quality"]), count, "quality"),
        "factuality": take(factuality_groups(streams["factuality"], ordered["factuality"], facts), count,
                           "factuality"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--groups", type=int, default=80, help="groups per criterion (default 80)")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = ("id", "criterion", "corruption", "source", "prefix", "candidates", "reference", "preferred",
            "dispreferred")
    for criterion, groups in build(args.seed, args.groups).items():
        lines = [json.dumps({k: g[k] for k in keys}, ensure_ascii=False) for g in groups]
        (out / f"{criterion}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"wrote {len(groups)} {criterion} groups to {out / f'{criterion}.jsonl'}")


if __name__ == "__main__":
    main()
