"""Synthetic reasoning data the project makes itself (no hub): arithmetic and counting traces.

Used to teach the tiny test model the OVR format, by the tiny cold-start recipe, and (with drawn
images) by the tiny RL recipe and the local benchmark files.
"""

from __future__ import annotations

import random

from ovr_serve.format import format_completion

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


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


def shape_counting_example(rng: random.Random, size: int = 56, max_count: int = 3) -> dict:
    """A drawn image with 1..``max_count`` shapes of one colour (plus distractors of other colours),
    the question "How many <colour> shapes are in the image?" and the count as gold.

    The tiny RL recipe's visual task: the answer is in the image only. ``size`` 56 gives Qwen2.5-VL
    4x4 patches of 14 pixels, i.e. 4 image tokens after the 2x2 merge.
    """
    from PIL import Image, ImageDraw

    colour = rng.choice(list(COLOURS))
    count = rng.randint(1, max_count)
    others = [c for c in COLOURS if c != colour]
    shapes = [colour] * count + [rng.choice(others) for _ in range(rng.randint(0, 2))]
    rng.shuffle(shapes)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = size // 3
    cells = rng.sample(range(9), len(shapes))  # one shape per cell of a 3x3 grid: never overlapping
    for name, where in zip(shapes, cells, strict=True):
        x, y = (where % 3) * cell + 2, (where // 3) * cell + 2
        box = [x, y, x + cell - 4, y + cell - 4]
        if rng.random() < 0.5:
            draw.rectangle(box, fill=COLOURS[name])
        else:
            draw.ellipse(box, fill=COLOURS[name])
    return {
        "image": image,
        "question": f"How many {colour} shapes are in the image?",
        "gold": str(count),
    }


def shape_counting_examples(
    n: int, seed: int = 0, size: int = 56, max_count: int = 3
) -> list[dict]:
    """``n`` shape-counting examples (image, question, gold), deterministic for a seed."""
    rng = random.Random(seed)
    return [shape_counting_example(rng, size, max_count) for _ in range(n)]
