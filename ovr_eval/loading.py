"""Benchmark items from a local copy in the public dataset's own format, or from the hub.

A local copy is a ``.jsonl``, ``.json`` or ``.parquet`` file, or a folder of them (also under
``data/``, as hub repositories lay them out), with the public dataset's columns; images are paths
relative to the file, data URLs, ``{"bytes": …}`` dicts (parquet exports) or decoded images. Every
image is sent to the endpoint as a data URL. Errors say which file, line or row, and what to do.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

from ovr_core.hub import hub_offline, hub_reachable
from ovr_eval.benchmarks import Benchmark, DatasetError, Item


def load_items(
    bench: Benchmark, source: str | Path | None = None, limit: int | None = None
) -> list[Item]:
    """The benchmark's items from ``source`` (local file/folder) or, without one, from the hub."""
    items = []
    for split, index, row, root in _rows(bench, source):
        missing = [k for k in bench.required if k not in row]
        if missing:
            where = f"{source} row {index}" if source else f"{bench.hub[0]} row {index}"
            raise DatasetError(
                f"{bench.name}: {where} lacks {missing}; a {bench.title} row needs {list(bench.required)}"
            )
        item = bench.to_item(row, index, split)
        if item is None:
            continue
        item.images = [image_data_url(img, root) for img in item.images]
        items.append(item)
        if limit and len(items) >= limit:
            break
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{bench.name}: duplicate question ids in {source or bench.hub[0]}")
    return items


def _rows(bench: Benchmark, source) -> Iterator[tuple[str, int, dict, Path | None]]:
    if source is not None:
        path = Path(source)
        if not path.exists():
            raise DatasetError(f"{bench.name}: no such file or folder: {path}")
        files = [path] if path.is_file() else _data_files(path)
        if not files:
            raise DatasetError(f"{bench.name}: no .jsonl/.json/.parquet file in {path}")
        for file in files:
            split = file.stem
            for index, row in enumerate(_read_file(file)):
                yield split, index, row, file.parent
        return
    hub_path, config, splits = bench.hub
    if not hub_offline() and not hub_reachable():
        raise DatasetError(
            f"{bench.name}: the hub is unreachable, so {hub_path} cannot be downloaded; pass a local "
            f"copy (--data {bench.name}=PATH) or set HF_HUB_OFFLINE=1 to use a cached one"
        )
    try:
        import datasets

        for split in splits:
            ds = datasets.load_dataset(hub_path, config, split=split)
            for index, row in enumerate(ds):
                yield split, index, row, None
    except DatasetError:
        raise
    except Exception as e:  # offline, gated, renamed: say what to do instead
        raise DatasetError(
            f"{bench.name}: could not load {hub_path} ({config or 'default'}) from the hub: "
            f"{type(e).__name__}: {str(e)[:200]}. Pass a local copy: --data {bench.name}=PATH"
        ) from e


def _data_files(folder: Path) -> list[Path]:
    for pattern in (
        "*.jsonl",
        "*.json",
        "*.parquet",
        "data/*.jsonl",
        "data/*.json",
        "data/*.parquet",
    ):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def _read_file(file: Path) -> Iterator[dict]:
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            yield from pq.read_table(file).to_pylist()
        except Exception as e:
            raise DatasetError(f"{file}: not a readable parquet file: {e}") from e
        return
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{file}: not valid JSON: {e}") from e
        rows = data if isinstance(data, list) else list(data.values())
        for row in rows:
            if not isinstance(row, dict):
                raise DatasetError(
                    f"{file}: expected a list of objects, found {type(row).__name__}"
                )
            yield row
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{file}:{n}: not a JSON object: {e.msg}") from e
        if not isinstance(row, dict):
            raise DatasetError(f"{file}:{n}: expected a JSON object, found {type(row).__name__}")
        yield row


def image_data_url(image, root: Path | None) -> str:
    """An image (PIL, bytes dict, path relative to ``root``, data URL) as a PNG/JPEG data URL."""
    if isinstance(image, str) and image.startswith("data:"):
        return image
    if isinstance(image, dict):
        if image.get("bytes"):
            return _bytes_url(image["bytes"])
        image = image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return _bytes_url(bytes(image))
    if isinstance(image, str):
        path = Path(image)
        if not path.is_absolute() and root is not None:
            path = root / path
        if not path.exists():
            raise DatasetError(f"image not found: {path}")
        return _bytes_url(path.read_bytes())
    if hasattr(image, "save"):  # PIL
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return _bytes_url(buf.getvalue())
    raise DatasetError(f"cannot read an image from {type(image).__name__}")


def _bytes_url(data: bytes) -> str:
    kind = "jpeg" if data[:3] == b"\xff\xd8\xff" else "png"
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"
