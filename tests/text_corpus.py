"""A seeded English-like text for tests that need a corpus: sentences from a small grammar, written on the spot.

Nothing is downloaded and no text is shipped: the words below are the test's own. Bytes follow
English-like statistics (words, spaces, punctuation, capitals), so a tiny model's byte-level loss
falls well below log(256) within a few hundred steps.
"""

from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = ["the model", "a small network", "the optimizer", "every layer", "the benchmark", "our kernel",
            "the scheduler", "a careful engineer", "the device", "each worker"]
VERBS = ["measures", "trains", "reads", "writes", "reduces", "computes", "records", "compares", "predicts", "keeps"]
OBJECTS = ["the loss", "every token", "the held-out text", "a long sequence", "the gradient", "its memory",
           "the energy counter", "a fresh batch", "the step time", "the perplexity"]
TAILS = ["before the window opens", "on the device", "with care", "after warmup", "for each step",
         "in a fresh process", "without a download", "as the report shows"]


def sentence(rng: random.Random) -> str:
    words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.5:
        words += f" {rng.choice(TAILS)}"
    return words[0].upper() + words[1:] + rng.choice([".", ".", ".", "!", "?"])


def write_corpus(path: Path, *, size_bytes: int = 40_000, seed: int = 0) -> Path:
    """Write about `size_bytes` of paragraphs to `path` (UTF-8) and return it."""
    rng = random.Random(seed)
    paragraphs, size = [], 0
    while size < size_bytes:
        paragraph = " ".join(sentence(rng) for _ in range(rng.randint(3, 7)))
        paragraphs.append(paragraph)
        size += len(paragraph) + 1
    Path(path).write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    return Path(path)
