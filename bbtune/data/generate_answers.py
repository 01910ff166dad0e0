"""How bbtune's built-in generation set (`bbtune/data/answers/*.jsonl`) was made: short questions written for bbtune
whose answer is one word (or a number) that small models know and that has one right spelling. Not imported by
the package.

Five kinds, from hand-written facts: capitals of well-known countries, irregular plurals, irregular past tenses,
opposites with one usual answer, and small sums written as digits. Each fact is asked in one of a few wordings
(drawn with a fixed seed); a fact appears once in the whole set, so no question of the test split repeats (or
rewords) one of the training pool. The label is the answer itself (a generation task: ``--preset answer``).

    python bbtune/data/generate_answers.py   # rewrites train.jsonl (the pool for train/dev) and test.jsonl
"""
from __future__ import annotations

import random
from pathlib import Path

from bbtune.data.generate_demo import write_splits

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid",
            "Russia": "Moscow", "Egypt": "Cairo", "England": "London", "Greece": "Athens", "Portugal": "Lisbon",
            "Ireland": "Dublin", "Austria": "Vienna", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw",
            "China": "Beijing", "Thailand": "Bangkok", "Kenya": "Nairobi", "Peru": "Lima", "Cuba": "Havana",
            "Hungary": "Budapest", "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels",
            "Argentina": "Buenos Aires", "South Korea": "Seoul", "Mexico": "Mexico City", "Canada": "Ottawa",
            "Australia": "Canberra", "India": "New Delhi"}
PLURALS = {"mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "man": "men", "woman": "women",
           "goose": "geese", "person": "people", "knife": "knives", "leaf": "leaves", "wolf": "wolves",
           "box": "boxes", "city": "cities", "baby": "babies", "potato": "potatoes", "dog": "dogs", "car": "cars",
           "house": "houses", "bus": "buses", "wife": "wives", "ox": "oxen", "louse": "lice"}
PAST = {"go": "went", "eat": "ate", "see": "saw", "run": "ran", "write": "wrote", "take": "took", "give": "gave",
        "come": "came", "buy": "bought", "think": "thought", "swim": "swam", "sing": "sang", "drink": "drank",
        "fly": "flew", "know": "knew", "speak": "spoke", "break": "broke", "drive": "drove", "begin": "began",
        "teach": "taught", "catch": "caught", "bring": "brought", "sell": "sold", "tell": "told", "find": "found"}
OPPOSITES = {"hot": "cold", "up": "down", "day": "night", "black": "white", "left": "right", "true": "false",
             "win": "lose", "north": "south", "east": "west", "top": "bottom", "first": "last", "inside": "outside",
             "always": "never", "push": "pull", "wet": "dry", "heavy": "light", "yes": "no", "buy": "sell",
             "early": "late", "question": "answer"}
WORDINGS = {
    "capital": ["What is the capital of {x}?", "Which city is the capital of {x}?", "Name the capital of {x}."],
    "plural": ["What is the plural of {x}?", "What is the plural of the word \"{x}\"?", "One {x}, two what?"],
    "past": ["What is the past tense of {x}?", "What is the past tense of the verb \"{x}\"?",
             "Yesterday I ___ (past tense of {x})."],
    "opposite": ["What is the opposite of {x}?", "What is the opposite of the word \"{x}\"?",
                 "Give the opposite of {x}."],
    "sum": ["What is {a} + {b}?", "What is {a} plus {b}?", "How much is {a} + {b}?"],
}
N_SUMS = 30


def facts(rng: random.Random) -> list[tuple[str, str, dict[str, str]]]:
    """Every (kind, answer, slots) once; the sums are distinct pairs a + b with 2 <= a, b <= 20 (a <= b)."""
    out = [("capital", c, {"x": x}) for x, c in CAPITALS.items()]
    out += [("plural", p, {"x": x}) for x, p in PLURALS.items()]
    out += [("past", p, {"x": x}) for x, p in PAST.items()]
    out += [("opposite", o, {"x": x}) for x, o in OPPOSITES.items()]
    pairs = sorted({(a, b) for a in range(2, 21) for b in range(a, 21)})
    out += [("sum", str(a + b), {"a": str(a), "b": str(b)}) for a, b in rng.sample(pairs, N_SUMS)]
    return out


def build(n_pool: int = 64, seed: int = 2026) -> tuple[list[dict], list[dict]]:
    """The training pool (train and dev are drawn from it) and the test split: every fact once, each in a wording
    drawn with `seed`; the pool holds about the same share of every kind."""
    rng = random.Random(seed)
    rows = [{"text": rng.choice(WORDINGS[kind]).format(**slots), "label": answer, "kind": kind}
            for kind, answer, slots in facts(rng)]
    rng.shuffle(rows)
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    pool: list[dict] = []
    while len(pool) < n_pool:  # round robin over the kinds: a balanced pool
        for kind_rows in by_kind.values():
            if kind_rows and len(pool) < n_pool:
                pool.append(kind_rows.pop())
    test = [row for kind_rows in by_kind.values() for row in kind_rows]
    rng.shuffle(pool)
    rng.shuffle(test)
    return pool, test


def main() -> None:
    write_splits(Path(__file__).parent / "answers", *build())


if __name__ == "__main__":
    main()
