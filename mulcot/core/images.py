"""The one image module: the pixel budget, reading an image, and the forms it travels in.

Every path that shows a model an image goes through :func:`load_image` (read, RGB, downsized with its aspect kept
to at most ``max_pixels`` pixels and ``max_side`` pixels on its longer side), so training, in-process generation,
llama.cpp and a server see exactly the same pixels. The forms:

- a PIL image (transformers processors);
- :func:`png_bytes` / :func:`png_data_url`: lossless, for llama.cpp and generation servers (the same pixels);
- :func:`jpeg_data_url`: the teacher's request (a JPEG bounded by its longer side, as OpenAI-style APIs bill by it).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import IO, Any

from mulcot.errors import DataError, NotFoundError

DEFAULT_MAX_PIXELS = 280 * 280  # the authors' image budget
DEFAULT_MIN_PIXELS = 56 * 56
TEACHER_MAX_SIDE = 280  # the teacher's images: longer side in pixels
MIN_SIDE = 28  # a downsized image keeps at least one 28-pixel patch per side (Qwen-VL's merge unit)


def load_image(source: str | os.PathLike[str] | IO[bytes], max_pixels: int | None = DEFAULT_MAX_PIXELS,
               max_side: int | None = None) -> Any:
    """An RGB PIL image from a path (or a binary file object), downsized (aspect kept) to at most ``max_pixels``
    pixels and ``max_side`` pixels on its longer side (None or 0: no limit). A missing file is a
    :class:`NotFoundError`, an unreadable one a :class:`DataError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    name = "<image>"
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if not path.is_file():
            raise NotFoundError(f"image not found: {path}")
        name, source = str(path), path
    try:
        with Image.open(source) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read the image ({err})", file=name) from err
    w, h = im.size
    scale = 1.0
    if max_pixels and w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
    if max_side and max(w, h) * scale > max_side:
        scale = max_side / max(w, h)
    if scale < 1.0:
        size = (max(MIN_SIDE, int(w * scale)), max(MIN_SIDE, int(h * scale)))
        im = im.resize(size, Image.Resampling.BICUBIC)
    return im


BLANK_GREY = (128, 128, 128)


def blank_like(source: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """A blank (mid-grey) PNG of the same size as the image at ``source``, in ``folder`` (one file per size, made
    once): what a modality probe shows a vision model instead of the post's image, so the number of image tokens
    stays the same and only the content is gone."""
    from PIL import Image

    path = Path(source).expanduser()
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError as err:
        raise NotFoundError(f"image not found: {path}") from err
    except OSError as err:
        raise DataError(f"cannot read the image ({err})", file=str(path)) from err
    out = Path(folder) / f"blank-{w}x{h}.png"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        Image.new("RGB", (w, h), BLANK_GREY).save(tmp, format="PNG")
        os.replace(tmp, out)
    return out


def png_bytes(image: Any) -> bytes:
    """A PIL image as PNG bytes (lossless: the pixels stay exactly as given)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_data_url(image: Any) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL (lossless)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def jpeg_data_url(path: str | os.PathLike[str], max_side: int = TEACHER_MAX_SIDE, quality: int = 90) -> str:
    """The image as a base64 JPEG data URL, downsized so that its longer side is at most ``max_side`` (the
    teacher's request)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
