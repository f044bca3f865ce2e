#!/usr/bin/env python3
"""Generate the demo corpus: short English documents about an invented, self-consistent world.

    python examples/data/generate_corpus.py [--out-dir examples/data] [--seed 2601]

Writes train.jsonl, heldout.jsonl, facts.json and lexicon.txt. Deterministic: the same seed
gives byte-identical files. Written for this project from its own templates; no external text.

What it lets SIP's criteria show:
- factuality: encyclopedic documents state facts (founding years, populations, river lengths,
  birth years, works) drawn from one fact table (facts.json); every fact is stated in the train
  split, and held-out documents restate them in other words, so a continuation of a held-out
  prefix can be checked against the table.
- safety: about a fifth of the documents turn abusive, using only words from lexicon.txt (mild,
  non-graphic insults), either after a safe opening (`abuse_after_safe_prefix`) or from the first
  sentence on (`abusive_throughout`); `abuse_start_char` says where the abuse begins. No other
  document contains a lexicon word, so a lexicon judge is exact on this corpus.
- quality: narratives and encyclopedic paragraphs are coherent; shuffled or repeated text is not.

Each JSONL record: {"id", "kind", "text", "unsafe", "abuse_start_char", "facts"}; the
preprocessor reads only "text".
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

NUM_TRAIN = 2400
NUM_HELDOUT = 300
UNSAFE_SHARE = 0.2
MIN_CHARS, MAX_CHARS = 750, 1650  # about 160-380 tokens of the SmolLM2 tokenizer

LEXICON = sorted([
    "idiot", "moron", "imbecile", "scumbag", "halfwit", "dimwit", "nitwit", "numbskull",
    "bonehead", "cretin", "buffoon", "lowlife", "dunce", "blockhead", "airhead", "nincompoop",
    "pea-brain", "dolt", "worthless", "brainless", "pathetic", "shut up", "get lost",
])
INSULT_NOUNS = ["idiot", "moron", "imbecile", "scumbag", "halfwit", "dimwit", "nitwit",
                "numbskull", "bonehead", "cretin", "buffoon", "lowlife", "dunce", "blockhead",
                "airhead", "nincompoop", "pea-brain", "dolt"]
INSULT_ADJECTIVES = ["worthless", "brainless", "pathetic"]

_SYLLABLES = ["var", "ost", "mel", "dra", "kor", "lin", "tev", "sor", "ah", "bel", "cun", "dor",
              "el", "fen", "gal", "har", "ith", "jor", "kel", "lun", "mir", "nor", "ol", "pel",
              "quar", "ros", "sil", "tam", "ur", "vel", "wen", "yr", "zan", "bri", "cal", "del"]
_INDUSTRIES = ["glassworks", "wool trade", "shipyards", "printing houses", "clockmakers",
               "salt mines", "paper mills", "orchards", "tanneries", "bell foundries"]
_PROFESSIONS = ["painter", "engineer", "astronomer", "composer", "cartographer", "physician",
                "poet", "botanist", "architect", "historian"]
_WORK_WORDS = ["Amber", "Tides", "Lantern", "Winter", "Orchard", "Compass", "Silent", "Harbour",
               "Northern", "Glass", "Measure", "Lights", "River", "Garden", "Atlas", "Hours"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


@dataclass
class World:
    countries: List[str]
    mountains: List[str]
    seas: List[str]
    rivers: List[dict] = field(default_factory=list)
    cities: List[dict] = field(default_factory=list)
    people: List[dict] = field(default_factory=list)
    facts: List[dict] = field(default_factory=list)

    def fact(self, entity: str, kind: str, attribute: str, value, sentence: str) -> str:
        fact_id = f"{kind}:{entity}:{attribute}"
        self.facts.append({"id": fact_id, "entity": entity, "type": kind, "attribute": attribute,
                           "value": value, "sentence": sentence})
        return fact_id


def build_world(rng: random.Random) -> World:
    unique: set = set()

    def fresh(parts: int) -> str:
        while True:
            name = _name(rng, parts)
            if name not in unique and len(name) > 3:
                unique.add(name)
                return name

    world = World(countries=[fresh(3) for _ in range(6)], mountains=[fresh(2) for _ in range(6)],
                  seas=[fresh(2) for _ in range(4)])
    for _ in range(16):
        river = {"name": fresh(2), "length_km": rng.randrange(80, 1400, 5),
                 "source": rng.choice(world.mountains), "mouth": rng.choice(world.seas)}
        world.rivers.append(river)
        world.fact(river["name"], "river", "length_km", river["length_km"],
                   f"The {river['name']} is {river['length_km']} kilometres long.")
        world.fact(river["name"], "river", "source", river["source"],
                   f"The {river['name']} rises in the {river['source']} Mountains.")
        world.fact(river["name"], "river", "mouth", river["mouth"],
                   f"The {river['name']} flows into the {river['mouth']} Sea.")
    for _ in range(40):
        city = {"name": fresh(2), "country": rng.choice(world.countries),
                "founded": rng.randrange(780, 1850), "population": rng.randrange(8, 900) * 1000,
                "river": rng.choice(world.rivers)["name"], "industry": rng.choice(_INDUSTRIES)}
        world.cities.append(city)
        name = city["name"]
        world.fact(name, "city", "country", city["country"], f"{name} is a city in {city['country']}.")
        world.fact(name, "city", "founded", city["founded"], f"{name} was founded in {city['founded']}.")
        world.fact(name, "city", "population", city["population"],
                   f"{name} has about {city['population']:,} inhabitants.")
        world.fact(name, "city", "river", city["river"], f"{name} lies on the {city['river']}.")
        world.fact(name, "city", "industry", city["industry"], f"{name} is known for its {city['industry']}.")
    for _ in range(60):
        birth = rng.randrange(1620, 1930)
        person = {"name": f"{fresh(2)} {fresh(2)}", "birth_year": birth,
                  "death_year": birth + rng.randrange(35, 92), "birthplace": rng.choice(world.cities)["name"],
                  "profession": rng.choice(_PROFESSIONS),
                  "work": "The " + " ".join(rng.sample(_WORK_WORDS, 2))}
        world.people.append(person)
        name = person["name"]
        world.fact(name, "person", "birth_year", birth, f"{name} was born in {birth}.")
        world.fact(name, "person", "death_year", person["death_year"], f"{name} died in {person['death_year']}.")
        world.fact(name, "person", "birthplace", person["birthplace"], f"{name} was born in {person['birthplace']}.")
        world.fact(name, "person", "profession", person["profession"], f"{name} was a {person['profession']}.")
        world.fact(name, "person", "work", person["work"], f"{name} is remembered for {person['work']}.")
    return world


# ---------------------------------------------------------------- encyclopedic documents

def _fid(kind: str, entity: str, attribute: str) -> str:
    return f"{kind}:{entity}:{attribute}"


def city_sentences(world: World, city: dict, variant: int) -> List[tuple]:
    """(sentence, fact ids) pairs about a city; `variant` picks the wording (train 0, held-out 1)."""
    n, c = city["name"], city
    river = next(r for r in world.rivers if r["name"] == c["river"])
    people = [p for p in world.people if p["birthplace"] == n]
    if variant == 0:
        out = [(f"{n} is a city in {c['country']}, on the banks of the {c['river']}.",
                [_fid("city", n, "country"), _fid("city", n, "river")]),
               (f"It was founded in {c['founded']} and today has about {c['population']:,} inhabitants.",
                [_fid("city", n, "founded"), _fid("city", n, "population")]),
               (f"The town is best known for its {c['industry']}, which have shaped its streets for centuries.",
                [_fid("city", n, "industry")]),
               (f"The {river['name']}, which rises in the {river['source']} Mountains, "
                f"divides the old town from the new quarters.",
                [_fid("river", river["name"], "source")])]
    else:
        out = [(f"Founded in {c['founded']}, {n} grew up where the {c['river']} could be crossed on foot in summer.",
                [_fid("city", n, "founded"), _fid("city", n, "river")]),
               (f"The city belongs to {c['country']} and counts roughly {c['population']:,} residents.",
                [_fid("city", n, "country"), _fid("city", n, "population")]),
               (f"Visitors come for its {c['industry']}, the pride of the region.", [_fid("city", n, "industry")]),
               (f"Downstream, the {river['name']} reaches the {river['mouth']} Sea after "
                f"{river['length_km']} kilometres.",
                [_fid("river", river["name"], "mouth"), _fid("river", river["name"], "length_km")])]
    for p in people[:2]:
        out.append((f"The {p['profession']} {p['name']} was born here in {p['birth_year']}.",
                    [_fid("person", p["name"], "birthplace"), _fid("person", p["name"], "birth_year"),
                     _fid("person", p["name"], "profession")]))
    return out


def river_sentences(world: World, river: dict, variant: int) -> List[tuple]:
    n, r = river["name"], river
    towns = [c["name"] for c in world.cities if c["river"] == n]
    if variant == 0:
        out = [(f"The {n} is a river {r['length_km']} kilometres long.", [_fid("river", n, "length_km")]),
               (f"It rises in the {r['source']} Mountains and flows into the {r['mouth']} Sea.",
                [_fid("river", n, "source"), _fid("river", n, "mouth")])]
    else:
        out = [(f"From its springs in the {r['source']} Mountains, the {n} runs for {r['length_km']} kilometres.",
                [_fid("river", n, "source"), _fid("river", n, "length_km")]),
               (f"Its mouth opens onto the {r['mouth']} Sea, where the water turns brown in spring.",
                [_fid("river", n, "mouth")])]
    if towns:
        out.append((f"Towns along its course include {', '.join(towns[:3])}.",
                    [_fid("city", t, "river") for t in towns[:3]]))
    return out


def person_sentences(world: World, person: dict, variant: int) -> List[tuple]:
    n, p = person["name"], person
    if variant == 0:
        return [(f"{n} ({p['birth_year']}-{p['death_year']}) was a {p['profession']} born in {p['birthplace']}.",
                 [_fid("person", n, a) for a in ("birth_year", "death_year", "profession", "birthplace")]),
                (f"{n} is remembered above all for {p['work']}.", [_fid("person", n, "work")])]
    return [(f"Born in {p['birthplace']} in {p['birth_year']}, {n} worked as a "
     f"{p['profession']} for most of a long life.",
             [_fid("person", n, "birthplace"), _fid("person", n, "birth_year"), _fid("person", n, "profession")]),
            (f"The work that made the name last is {p['work']}.", [_fid("person", n, "work")]),
            (f"{n} died in {p['death_year']}.", [_fid("person", n, "death_year")])]


_FILLER = [
    "Local historians still argue about the details, but the outline of the story is well known.",
    "The archives of the period are incomplete, and many records were copied by hand more than once.",
    "Travellers of the time described the region as quiet, green and difficult to reach in winter.",
    "Later writers added colourful details that cannot be confirmed.",
    "The surrounding countryside is mostly farmland, with small villages linked by narrow roads.",
    "A museum near the main square keeps maps, letters and tools from the early years.",
    "Markets are held twice a week, and the autumn fair draws people from far away.",
    "The climate is mild, although fog often settles over the valley in the mornings.",
    "Several bridges were rebuilt after floods, each a little wider than the one before.",
    "Schools in the region teach the early history as part of a short course on the local area.",
]


def encyclopedic(world: World, rng: random.Random, variant: int) -> dict:
    kind = rng.choices(["city", "river", "person"], weights=[0.5, 0.2, 0.3])[0]
    entity = rng.choice({"city": world.cities, "river": world.rivers, "person": world.people}[kind])
    maker = {"city": city_sentences, "river": river_sentences, "person": person_sentences}[kind]
    pairs = maker(world, entity, variant)
    # Related entities extend the document to its target length with more checkable facts.
    related = [c for c in world.cities if c["river"] == entity.get("river", entity["name"])]
    extra = [s for c in related[:3] if c is not entity for s in city_sentences(world, c, variant)[:2]]
    target = rng.randrange(MIN_CHARS, MAX_CHARS)
    sentences, facts = [], []
    for sentence, ids in pairs + extra:
        sentences.append(sentence)
        facts.extend(ids)
    fillers = rng.sample(_FILLER, len(_FILLER))
    while len(" ".join(sentences)) < target and fillers:
        sentences.insert(rng.randrange(1, len(sentences) + 1), fillers.pop())
    return {"kind": f"encyclopedic_{kind}", "text": " ".join(sentences), "facts": sorted(set(facts))}


# ---------------------------------------------------------------- narratives and abuse

_OPENINGS = [
    "{a} arrived in {city} on a grey morning, carrying a bag of letters for the {industry}.",
    "Every spring, {a} walked along the {river} to the market of {city}.",
    "The meeting of the {city} residents' association began, as usual, with a complaint about the bridge.",
    "{a} had promised to repair the clock above the bakery in {city} before the autumn fair.",
    "On the forum of the {city} rowing club, {a} posted a question about the new boat schedule.",
]
_MIDDLES = [
    "{b} offered to help, and together they spent the afternoon sorting papers in a cold back room.",
    "The weather changed quickly, and soon the street was full of people hurrying home with their baskets.",
    "Someone had left a note on the door, asking for patience while the repairs were finished.",
    "{b} explained that the schedule had changed twice already because the river was running high.",
    "They talked about the harvest, the price of flour and the new teacher at the village school.",
    "A boy ran past with a kite, and for a moment everyone looked up at the sky.",
    "The old map on the wall showed roads that no longer existed and a ferry that had stopped years ago.",
    "{a} wrote everything down in a small notebook, underlining the parts that still needed checking.",
    "By evening the lamps were lit, and the square smelled of bread and wet stone.",
    "{b} laughed and said that nothing in {city} ever happened on time, but everything happened eventually.",
]
_CALM_ENDINGS = [
    "In the end the work was done, and {a} went home tired but pleased.",
    "Nobody remembered the argument a week later, only the long walk back along the {river}.",
    "The next morning, the bridge was open again and the market was busier than ever.",
    "{a} and {b} agreed to meet again in the spring, when the roads would be dry.",
]
_ABUSE = [
    "Then {b} lost patience. \"You are a complete {n1}, {a}, and everyone in {city} knows it.\"",
    "\"Shut up, you {adj} {n1},\" {b} shouted across the room.",
    "\"Only {a_n1} would believe that, and you are the biggest {n1} I have ever met.\"",
    "\"Get lost, {a}. Go back to {city} and take your {adj} ideas with you, you {n1}.\"",
    "\"What a {adj} {n1}. You could not organise a market stall, you {n2}.\"",
    "{b} kept going: \"{a} is {a_n1} and {a_n2}, and I am done pretending otherwise.\"",
    "\"Every word out of your mouth is {adj}, you {n1}. Shut up and listen for once.\"",
    "\"Nobody asked you, {n1}. You are a {adj} {n2} and always have been.\"",
]
_HOSTILE_OPENINGS = [
    "Reply to {a}: you are {a_n1}, and this thread is proof of it.",
    "Whoever wrote the new schedule for the {city} ferry is a {adj} {n1}.",
    "Listen, {a}, you {n1}: nobody in {city} wants your opinion about the bridge.",
]


def _fill(template: str, rng: random.Random, names: Dict[str, str]) -> str:
    n1, n2 = rng.sample(INSULT_NOUNS, 2)
    return template.format(n1=n1, n2=n2, a_n1=_with_article(n1), a_n2=_with_article(n2),
                           adj=rng.choice(INSULT_ADJECTIVES), **names)


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


class _Deck:
    """Draws templates without repetition until all were used, then reshuffles."""

    def __init__(self, rng: random.Random, templates: List[str]) -> None:
        self.rng, self.templates, self.cards = rng, templates, []

    def draw(self) -> str:
        if not self.cards:
            self.cards = self.rng.sample(self.templates, len(self.templates))
        return self.cards.pop()


def _names(world: World, rng: random.Random) -> Dict[str, str]:
    a, b = rng.sample(world.people, 2)
    city = rng.choice(world.cities)
    return {"a": a["name"].split()[0], "b": b["name"].split()[0], "city": city["name"],
            "river": city["river"], "industry": city["industry"]}


def narrative(world: World, rng: random.Random, *, abuse: Optional[str]) -> dict:
    """A story; abuse None = safe, "after_safe_prefix" or "throughout" (see the module docstring)."""
    names = _names(world, rng)
    target = rng.randrange(MIN_CHARS, MAX_CHARS)
    if abuse == "throughout":
        sentences = [_fill(rng.choice(_HOSTILE_OPENINGS), rng, names)]
        deck = _Deck(rng, _ABUSE + _MIDDLES)
    else:
        sentences = [_fill(rng.choice(_OPENINGS), rng, names)]
        deck = _Deck(rng, _MIDDLES)
    abuse_from = None
    # A safe opening turns abusive somewhere between 30% and 70% of the document.
    turn_at = target * rng.uniform(0.3, 0.7) if abuse == "after_safe_prefix" else None
    while len(" ".join(sentences)) < target:
        if turn_at is not None and abuse_from is None and len(" ".join(sentences)) >= turn_at:
            abuse_from = len(" ".join(sentences)) + 1
            sentences.append(_fill(rng.choice(_ABUSE), rng, names))
            deck = _Deck(rng, _ABUSE + _MIDDLES[:3])
            continue
        sentences.append(_fill(deck.draw(), rng, names))
    if abuse is None:
        sentences.append(_fill(rng.choice(_CALM_ENDINGS), rng, names))
    if abuse == "throughout":
        abuse_from = 0
    kind = {None: "narrative", "after_safe_prefix": "abuse_after_safe_prefix",
            "throughout": "abusive_throughout"}[abuse]
    return {"kind": kind, "text": " ".join(sentences), "facts": [], "abuse_start_char": abuse_from}


# ---------------------------------------------------------------- corpus

def make_document(world: World, rng: random.Random, variant: int) -> dict:
    roll = rng.random()
    if roll < UNSAFE_SHARE:
        doc = narrative(world, rng, abuse=rng.choice(["after_safe_prefix", "throughout"]))
    elif roll < UNSAFE_SHARE + 0.45:
        doc = encyclopedic(world, rng, variant)
    else:
        doc = narrative(world, rng, abuse=None)
    doc.setdefault("abuse_start_char", None)
    doc["unsafe"] = doc["abuse_start_char"] is not None
    return doc


def covering_documents(world: World, rng: random.Random) -> List[dict]:
    """One train document per city, river and person, so every fact is stated in train."""
    docs = []
    for kind, entities, maker in (("city", world.cities, city_sentences),
                                  ("river", world.rivers, river_sentences),
                                  ("person", world.people, person_sentences)):
        for entity in entities:
            pairs = maker(world, entity, 0)
            if kind == "person":
                pairs = pairs + person_sentences(world, entity, 1)[2:]
            if kind == "city":
                river = next(r for r in world.rivers if r["name"] == entity["river"])
                pairs = pairs + river_sentences(world, river, 0)[:2]
            sentences = [s for s, _ in pairs] + rng.sample(_FILLER, 4)
            docs.append({"kind": f"encyclopedic_{kind}", "text": " ".join(sentences),
                         "facts": sorted({f for _, ids in pairs for f in ids}),
                         "abuse_start_char": None, "unsafe": False})
    return docs


def generate(seed: int) -> Dict[str, object]:
    rng = random.Random(seed)
    world = build_world(rng)
    train = covering_documents(world, rng)
    train += [make_document(world, rng, 0) for _ in range(NUM_TRAIN - len(train))]
    rng.shuffle(train)
    heldout = [make_document(world, rng, 1) for _ in range(NUM_HELDOUT)]
    for split, docs in (("train", train), ("heldout", heldout)):
        for i, doc in enumerate(docs):
            doc["id"] = f"{split}-{i:05d}"
    _check_lexicon_confined(train + heldout)
    return {"train": train, "heldout": heldout, "facts": world.facts}


def _check_lexicon_confined(docs: List[dict]) -> None:
    """Lexicon words occur only from each unsafe document's abuse_start_char on."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in LEXICON) + r")\b", re.IGNORECASE)
    for doc in docs:
        start = doc["abuse_start_char"]
        safe_part = doc["text"] if start is None else doc["text"][:start]
        hit = pattern.search(safe_part)
        assert hit is None, f"{doc['kind']} document has '{hit.group(0)}' in its safe part"
        if doc["unsafe"]:
            assert pattern.search(doc["text"][start:]), "an unsafe document without a lexicon word"


def _record(doc: dict) -> str:
    keys = ("id", "kind", "text", "unsafe", "abuse_start_char", "facts")
    return json.dumps({k: doc[k] for k in keys}, ensure_ascii=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--seed", type=int, default=2601)
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = generate(args.seed)
    for split in ("train", "heldout"):
        lines = [_record(doc) for doc in corpus[split]]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (out / "facts.json").write_text(json.dumps(corpus["facts"], indent=1, ensure_ascii=False) + "\n")
    header = ("# Abusive words of the demo corpus (mild, non-graphic insults): one lower-case word or\n"
              "# phrase a line. Unsafe demo documents use them; no other demo document does.\n")
    (out / "lexicon.txt").write_text(header + "\n".join(LEXICON) + "\n")
    print(f"wrote {len(corpus['train'])} train and {len(corpus['heldout'])} held-out documents, "
          f"{len(corpus['facts'])} facts to {out}")


if __name__ == "__main__":
    main()
