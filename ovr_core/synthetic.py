"""Synthetic reasoning data the project makes itself (no hub): arithmetic and counting traces.

Used to teach the tiny test model the OVR format, by the tiny cold-start recipe, and (with drawn
images) by the tiny RL recipe and the local benchmark files.
"""

from __future__ import annotations

import random

from ovr_core.format import format_completion


def arithmetic_example(rng: random.Random) -> dict:
    """One question with a short step-by-step trace and a boxed answer."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    name = {"+": "plus", "-": "minus", "*": "times"}[op]
    question = f"What is {a} {op} {b}?"
    steps = [f"We need {a} {name} {b}.", f"{a} {op} {b} = {value}."]
    if rng.random() < 0.3:
        steps.append(f"Wait, let me check: {value} is right.")
    answer = f"The answer is \\boxed{{{value}}}."
    return {
        "question": question,
        "reasoning": " ".join(steps),
        "answer": answer,
        "gold": str(value),
    }


def counting_example(rng: random.Random) -> dict:
    """Count the items of a listed kind (a text stand-in for counting shapes in an image)."""
    n = rng.randint(1, 6)
    kind = rng.choice(["red", "blue", "green"])
    items = [kind] * n + [rng.choice(["red", "blue", "green"]) for _ in range(rng.randint(0, 4))]
    rng.shuffle(items)
    count = items.count(kind)
    question = f"How many {kind} in: {' '.join(items)}?"
    reasoning = f"I count the {kind} ones. There are {count}."
    return {
        "question": question,
        "reasoning": reasoning,
        "answer": f"So \\boxed{{{count}}}.",
        "gold": str(count),
    }


def reasoning_examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` mixed examples with a ``completion`` in the OVR format, deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = arithmetic_example(rng) if rng.random() < 0.6 else counting_example(rng)
        ex["completion"] = format_completion(ex["reasoning"], ex["answer"])
        out.append(ex)
    return out


COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}


def shape_counting_example(
    rng: random.Random, size: int = 56, max_count: int = 3, colour: str = "red"
) -> dict:
    """A drawn image with 1..``max_count`` shapes (squares or discs) of ``colour``, the question
    "How many shapes are in the image?" and the count as gold.

    The tiny RL recipe's visual task: the answer is in the image only. The image is a 2x2 grid,
    one shape per cell at most, and at ``size`` 56 each cell is exactly one Qwen2.5-VL image token
    (14-pixel patches, merged 2x2), so counting is counting the tokens that hold a shape. That is
    what a random ~1M-parameter vision tower can carry: a 3x3 grid of smaller shapes, or distractors
    of other colours, left the tiny model answering one constant number (a 0.33 guess) after RL;
    this layout reached 100% held-out greedy accuracy in 60 steps (~0.9 sampled by step 40), and
    a random colour per image slowed that to ~0.45 sampled at step 40 (tests/test_rl.py checks).
    """
    from PIL import Image, ImageDraw

    if not 1 <= max_count <= 4:
        raise ValueError(f"max_count {max_count}: the 2x2 grid holds 1 to 4 shapes")
    count = rng.randint(1, max_count)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = size // 2
    for where in rng.sample(range(4), count):
        x, y = (where % 2) * cell + 2, (where // 2) * cell + 2
        box = [x, y, x + cell - 4, y + cell - 4]
        if rng.random() < 0.5:
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.ellipse(box, fill=COLOURS[colour])
    return {
        "image": image,
        "question": "How many shapes are in the image?",
        "gold": str(count),
    }


def shape_counting_examples(
    n: int, seed: int = 0, size: int = 56, max_count: int = 3
) -> list[dict]:
    """``n`` shape-counting examples (image, question, gold), deterministic for a seed."""
    rng = random.Random(seed)
    return [shape_counting_example(rng, size, max_count) for _ in range(n)]
