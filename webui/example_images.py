"""The example images the UI offers a first visitor: drawn here with Pillow, committed as small PNGs.

Regenerate with ``python -m webui.example_images`` (writes ``webui/examples/*.png``).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

# (file name, question): each question has one right answer a reader can check on the picture.
EXAMPLES = [
    ("shapes.png", "How many circles are in the image? Put the final count in \\boxed{}."),
    ("numbers.png", "What is the sum of the two numbers shown? Put the result in \\boxed{}."),
    (
        "triangle.png",
        "The legs of this right triangle are 3 and 4. How long is the hypotenuse? Answer in \\boxed{}.",
    ),
]


def example_paths() -> list[tuple[str, str]]:
    """(image path, question) for every example, drawing any image that is missing."""
    missing = [name for name, _ in EXAMPLES if not (EXAMPLES_DIR / name).exists()]
    if missing:
        draw_examples(EXAMPLES_DIR)
    return [(str(EXAMPLES_DIR / name), question) for name, question in EXAMPLES]


def draw_examples(out_dir: Path) -> None:
    """Draw the example images into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _shapes().save(out_dir / "shapes.png", optimize=True)
    _numbers().save(out_dir / "numbers.png", optimize=True)
    _triangle().save(out_dir / "triangle.png", optimize=True)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (320, 240), "white")
    return img, ImageDraw.Draw(img)


def _shapes() -> Image.Image:
    img, d = _canvas()
    for x, y in [(60, 60), (200, 50), (130, 170)]:  # three circles
        d.ellipse([x - 30, y - 30, x + 30, y + 30], fill="#e4572e", outline="black", width=2)
    for x, y in [(250, 160), (50, 170)]:  # two squares
        d.rectangle([x - 25, y - 25, x + 25, y + 25], fill="#2e86ab", outline="black", width=2)
    return img


def _numbers() -> Image.Image:
    img, d = _canvas()
    font = ImageFont.load_default(size=96)
    d.text((50, 60), "17", fill="#2e86ab", font=font)
    d.text((200, 60), "25", fill="#e4572e", font=font)
    return img


def _triangle() -> Image.Image:
    img, d = _canvas()
    font = ImageFont.load_default(size=28)
    a, b, c = (60, 200), (60, 40), (270, 200)  # right angle at a
    d.polygon([a, b, c], outline="black", width=3)
    d.rectangle([60, 180, 80, 200], outline="black", width=2)
    d.text((25, 105), "3", fill="black", font=font)
    d.text((160, 205), "4", fill="black", font=font)
    d.text((175, 100), "?", fill="#e4572e", font=font)
    return img


if __name__ == "__main__":
    draw_examples(EXAMPLES_DIR)
    print("\n".join(str(p) for p, _ in example_paths()))
