"""How bbtune's built-in demo set (`bbtune/data/demo/*.jsonl`) was made: short product and film reviews written
for bbtune, composed from hand-written phrases with a fixed seed. Not imported by the package.

About half of the sentences are plain ("The battery died within a week."); the rest contrast a clause of the
other polarity ("Despite the lovely views, the room smelled of smoke.") or negate ("I can't say the plot made
sense."), which is where a small model's zero-shot reading goes wrong. Labels follow the main clause.

    python bbtune/data/generate_demo.py   # rewrites train.jsonl (the pool for few-shot train/dev) and test.jsonl
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = ["the film", "this movie", "the soundtrack", "the hotel", "the room", "the staff", "this phone",
            "the battery", "the pasta", "the service", "the novel", "the ending", "the sequel", "the app", "the concert",
            "the tour", "this laptop", "the headphones", "the coffee", "the delivery", "the game", "the show",
            "the museum", "the blender", "the course"]
POSITIVE = ["was a delight from start to finish", "exceeded every expectation I had", "made the whole evening worth it",
            "is the best I have tried in years", "felt fresh, warm and genuinely funny", "worked flawlessly all week",
            "was worth every penny", "left me smiling for days", "was thoughtful and beautifully made",
            "deserves all the praise it gets", "won me over completely", "was a pleasant surprise",
            "is something I would recommend to anyone", "kept me hooked until the very end", "was simply wonderful",
            "turned out far better than I hoped", "made me want to come back", "is clever, kind and well done"]
NEGATIVE = ["was a chore to sit through", "fell apart after two days", "was a waste of money",
            "left me bored and annoyed", "felt lazy and badly made", "broke the first time I used it",
            "was cold, rude and slow", "never lived up to the hype", "made me regret coming",
            "was the worst part of the trip", "is something I would not wish on anyone", "dragged on forever",
            "was a huge letdown", "stopped working after an hour", "was bland and overpriced",
            "turned out far worse than I feared", "made me want my money back", "is dull, clumsy and forgettable"]
MILD_POSITIVE = ["the cast was charming", "the views were lovely", "the packaging looked great", "the price was fair",
                 "the first chapter was gripping", "the staff smiled a lot", "the trailer was exciting",
                 "the screen is bright", "the menu sounded great", "the reviews were glowing"]
MILD_NEGATIVE = ["the start was slow", "the seats were cramped", "the box arrived dented", "it cost a bit more",
                 "the first level was confusing", "the queue was long", "the trailer looked silly",
                 "the manual is thin", "the room was small", "the reviews were mixed"]
OPENERS = ["", "Honestly, ", "To be fair, ", "In the end, ", "Overall, ", "Frankly, "]


def sentence(rng: random.Random, label: str) -> str:
    """One review of polarity `label`: plain, contrasted with a clause of the other polarity, or negated."""
    subject = rng.choice(SUBJECTS)
    main = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    other = rng.choice(MILD_NEGATIVE if label == "positive" else MILD_POSITIVE)
    kind = rng.random()
    if kind < 0.45:
        text = f"{rng.choice(OPENERS)}{subject} {main}."
    elif kind < 0.8:
        link = rng.choice(["Although {o}, {s} {m}.", "Even though {o}, {s} {m}.", "{O}, but {s} {m}.",
                           "Sure, {o}; still, {s} {m}."])
        text = link.format(o=other, O=other[0].upper() + other[1:], s=subject, m=main)
    else:
        flipped = rng.choice(NEGATIVE if label == "positive" else POSITIVE)
        text = rng.choice([f"I can't say {subject} {flipped}.", f"Nobody could claim {subject} {flipped}.",
                           f"It is not true that {subject} {flipped}."])
    return text[0].upper() + text[1:]


def build(n_pool: int = 96, n_test: int = 240, seed: int = 2026) -> tuple[list[dict], list[dict]]:
    """Balanced, duplicate-free pool (few-shot train/dev are drawn from it) and test split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_pool + n_test:
        label = ("positive", "negative")[len(rows) % 2]
        text = sentence(rng, label)
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    pool = [r for r in rows if r["label"] == "positive"][: n_pool // 2] + [r for r in rows if r["label"] == "negative"][: n_pool // 2]
    test = [r for r in rows if r not in pool]
    rng.shuffle(pool)
    return pool, test


def write_splits(folder: Path, pool: list[dict], test: list[dict]) -> None:
    """Write the pool and test rows as the JSON Lines files `TaskConfig(data=...)` reads (shared by the
    generators of bbtune's built-in sets)."""
    folder.mkdir(exist_ok=True)
    for name, rows in (("train.jsonl", pool), ("test.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {folder / name}")


def main() -> None:
    write_splits(Path(__file__).parent / "demo", *build())


if __name__ == "__main__":
    main()
