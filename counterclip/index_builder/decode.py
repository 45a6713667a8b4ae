"""Robust image decoding: one file -> an upright RGB PIL image, or a one-line reason why not.

`load_image` is what the index builder uses, and what anyone re-encoding an indexed file should use
too, with the index's options (`Index.load_image` does); `decode_query` applies the same rules to a
query given as a path, the bytes of an upload or a PIL image, so that a file always gives the same pixels:
EXIF orientation applied, first frame of animations, every mode converted to 8-bit RGB by one of
`RGB_RULES` (an index uses its model family's own: the pixels the family's library gives the model),
decompression bombs and absurd sizes refused before the pixels are decoded, large images shrunk only
when asked (``min_side``: the opt-in fast decode, never below the model's input).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_BACKGROUND = (255, 255, 255)
_ORIENTATION = 0x0112  # EXIF tag

#: How a decoded image becomes 8-bit RGB, by name (`DecodeOptions.rgb`; an index records its own):
RGB_RULES: dict[str, str] = {
    "robust": "transparency composited on white, 16-bit and float images scaled to 8 bits, other modes "
    "by Pillow (counterclip's own rule; every index built before the family rules)",
    "pillow": "Pillow's convert('RGB') (open_clip's and torchvision's transforms, SLIP, the bundled model)",
    "pillow-white": "transparency composited on white, other modes by Pillow's convert('RGB') (the "
    "Hugging Face image processors of transformers 5)",
}


class DecodeError(Exception):
    """A file that cannot be indexed; ``str(exc)`` is the one-line reason stored in the index."""


class ImageTooLarge(DecodeError):
    """Over a byte, pixel or side limit, or a decompression bomb: refused before its pixels are decoded."""


@dataclass(frozen=True)
class DecodeOptions:
    """What `load_image` refuses, and how much resolution it may drop (see `IndexCfg`)."""

    max_pixels: int = 89_478_485  # width * height
    max_side: int = 50_000  # longest side
    max_file_bytes: int = 512 * 1024 * 1024  # file size
    min_side: int | None = None  # shrink large images while their shortest side stays >= this: JPEGs
    # are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), others box-reduced by an integer
    # factor; None = always full resolution (the file's pixels: the default of an index)
    rgb: str = "robust"  # how other modes become RGB: a name of `RGB_RULES` (an index: its family's)

    def __post_init__(self) -> None:
        if self.rgb not in RGB_RULES:
            raise ValueError(f"unknown RGB rule {self.rgb!r}; expected one of {', '.join(RGB_RULES)}")


@dataclass
class LoadedImage:
    """A decoded file.

    ``image`` is upright RGB, for people and explainers. What the model embeds is `model_input`: under a
    family rule (`DecodeOptions.rgb` other than ``robust``) a file in another mode (transparency, palette,
    16-bit, CMYK) reaches the model's preprocessing in its own mode, upright, so the family's transform
    converts it where its library does (open_clip converts after resizing, Hugging Face before).
    """

    image: Image.Image  # upright RGB
    width: int  # of the file at full resolution, after EXIF rotation
    height: int
    sha256: str | None  # of the file's bytes (None for a decoded PIL image given as a query)
    size: int | None  # file size in bytes (None for a decoded PIL image given as a query)
    native: Image.Image | None = None  # upright, in the file's own mode, when the model converts it itself

    @property
    def model_input(self) -> Image.Image:
        """The image to hand to the model's ``preprocess``: what the index embedded for this file."""
        return self.native if self.native is not None else self.image


QuerySource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image  # what decode_query takes


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file's content (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_bytes(path: str | os.PathLike[str], options: DecodeOptions) -> bytes:
    """The file's bytes, after checking it is a non-empty regular file within the size limit."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DecodeError(_os_reason(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError("not a regular file")
    if st.st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    if st.st_size > options.max_file_bytes:
        raise DecodeError(f"file too large ({st.st_size} bytes > {options.max_file_bytes})")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise DecodeError(_os_reason(exc)) from None


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file disappeared"
    return f"cannot read: {exc.strerror or exc}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    Transparency (RGBA, LA, PA, palette with a transparent index) is composited on white; 16/32-bit
    integer images are scaled to 8 bits (not clipped); float images in [0, 1] are scaled by 255.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if (mode == "P" and "transparency" in image.info) or mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _INT_MODES:
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode != "I" or values.max(initial=0) > 255 else 255.0
        scaled = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        scaled = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    return image.convert("RGB")


def convert_rgb(image: Image.Image, rule: str = "robust") -> Image.Image:
    """Any Pillow mode -> 8-bit RGB by the named rule of `RGB_RULES` (``robust`` is `to_rgb`)."""
    if rule == "robust":
        return to_rgb(image)
    if rule == "pillow-white" and ("A" in image.getbands() or image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_bytes(data: bytes, options: DecodeOptions = DecodeOptions()) -> Image.Image:
    """Encoded image bytes -> upright RGB image; raises `DecodeError` with the reason."""
    return _decode(data, options).image


#: What `load_bytes` opens: the formats of `scan.IMAGE_EXTENSIONS` (never EPS or PDF, whose decoders run
#: external programs).
UPLOAD_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "MPO")


def load_bytes(data: bytes, options: DecodeOptions = DecodeOptions()) -> LoadedImage:
    """Decode image bytes from outside (an upload) the way `load_image` decodes a file.

    The byte limit is checked first, then the header's size against ``options.max_pixels`` and
    ``max_side`` (and Pillow's own bomb guard, ``Image.MAX_IMAGE_PIXELS``) before any pixel is decoded,
    so a small file that claims a huge image costs nothing. Only `UPLOAD_FORMATS` are opened.

    Args:
        data: the encoded image.
        options: limits and JPEG scaling; pass the index's (`Index.decode_options`) with tighter limits
            to get the pixels an indexed copy of the same file would give.

    Returns:
        LoadedImage (upright RGB image, full-resolution upright size, sha256 and length of ``data``).

    Raises:
        DecodeError: one-line reason (empty, too large, not an image, bomb, truncated...).
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if len(data) > options.max_file_bytes:
        raise ImageTooLarge(f"file too large ({len(data)} bytes > {options.max_file_bytes})")
    Image.init()  # registers every plugin (idempotent): an explicit format list needs them loaded
    formats = tuple(f for f in UPLOAD_FORMATS if f in Image.OPEN)
    return _with_bytes(_decode(data, options, formats=formats), data)


def _with_bytes(loaded: LoadedImage, data: bytes) -> LoadedImage:
    """``loaded`` with the sha256 and length of the bytes it was decoded from."""
    return dataclasses.replace(loaded, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def _converted(upright: Image.Image, size: tuple[int, int], options: DecodeOptions) -> LoadedImage:
    """An upright decoded image -> its RGB by ``options.rgb``, shrunk as ``options.min_side`` allows, and
    under a family rule the image itself as the model's input when it is in another mode (not shrunk:
    the fast decode gives the model the shrunk RGB)."""
    rgb = convert_rgb(upright, options.rgb)
    side = options.min_side
    factor = min(rgb.size) // side if side else 1
    if factor >= 2:
        return LoadedImage(rgb.reduce(factor), size[0], size[1], None, None)
    native = upright if options.rgb != "robust" and rgb is not upright else None
    return LoadedImage(rgb, size[0], size[1], None, None, native)


def _decode(data: bytes, options: DecodeOptions, formats: tuple[str, ...] | None = None) -> LoadedImage:
    """-> the upright image (``sha256`` and ``size`` unset); its width and height are the upright
    full-resolution size, the image smaller when ``options.min_side`` lets it shrink. ``formats``
    restricts what Pillow may open."""
    try:
        # Pillow warns between 1x and 2x its pixel limit and raises above; the limit check below refuses
        # both, so the CLI silences that warning (a library must not touch the global warning filters).
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt image header: {exc}") from None
    width, height = image.size
    _check_size(width, height, options)
    try:
        orientation = int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # malformed EXIF: treated as upright, like exif_transpose below
        orientation = 1
    upright_size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    side = options.min_side
    if side and image.format == "JPEG" and min(width, height) >= 2 * side:
        shortest = min(width, height)
        image.draft(None, (math.ceil(width * side / shortest), math.ceil(height * side / shortest)))
    try:
        image.seek(0)  # animations: the first frame
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            raise DecodeError(f"truncated image: {text}") from None
        raise DecodeError(f"corrupt image data: {text}") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # malformed EXIF: keep the stored orientation rather than losing the image
        pass
    return _converted(image, upright_size, options)


def load_image(path: str | os.PathLike[str], options: DecodeOptions = DecodeOptions()) -> LoadedImage:
    """Read and decode one file the way the index does (`Index.load_image` passes the index's options).

    Args:
        path: the image file.
        options: size limits and JPEG scaling (`DecodeOptions`). Default: Pillow's pixel limit, 50000 px
            sides, 512 MB files, full resolution.

    Returns:
        LoadedImage with the upright RGB image, its full-resolution upright size, the file's sha256 and
        byte count.

    Raises:
        DecodeError: one-line reason (empty file, not an image, truncated, bomb, permission denied...).

    Examples::

        >>> loaded = load_image("photos/cat.jpg")
        >>> loaded.image.mode, loaded.width, loaded.height
        ('RGB', 480, 640)
    """
    data = _read_bytes(path, options)
    return _with_bytes(_decode(data, options), data)


def decode_query(source: QuerySource, options: DecodeOptions = DecodeOptions()) -> LoadedImage:
    """Decode a query image by exactly the builder's rules, whatever form it comes in.

    The same EXIF orientation, first frame, alpha composited on white, 16-bit and float scaling, size
    limits checked before the pixels are decoded, and the index's shrinking (JPEG DCT scaling, box
    reduction): an uploaded copy of an indexed file reproduces its stored vector.

    Args:
        source: a file path; the bytes of an image file (an upload); or a PIL image. A PIL image that was
            opened from a file and not loaded yet is decoded from that file (exactly as indexed); an
            already decoded one is rotated by its EXIF tag, converted and shrunk by the same rules (a
            large JPEG that was decoded at full size can then differ slightly from its DCT-scaled decode).
        options: the index's `DecodeOptions` (`Index.decode_query` passes them). Default: full
            resolution, Pillow's pixel limit.

    Returns:
        LoadedImage (``sha256`` and ``size`` are None for a decoded PIL image).

    Raises:
        DecodeError: one-line reason (empty, not an image, too large, truncated...).

    Examples::

        >>> decode_query(open("cat.jpg", "rb").read(), idx.decode_options).image.mode
        'RGB'
    """
    if isinstance(source, Image.Image):
        return _decode_pil(source, options)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise DecodeError("empty file (0 bytes)")
        if len(data) > options.max_file_bytes:
            raise DecodeError(f"file too large ({len(data)} bytes > {options.max_file_bytes})")
        return _with_bytes(_decode(data, options), data)
    if isinstance(source, (str, os.PathLike)):
        return load_image(source, options)
    raise TypeError(f"a query image is a path, bytes or a PIL image, not {type(source).__name__}")


def _check_size(width: int, height: int, options: DecodeOptions) -> None:
    """The size rules, checked on the header before any pixel is decoded (`ImageTooLarge` when over)."""
    if width < 1 or height < 1:
        raise DecodeError(f"invalid dimensions {width}x{height}")
    if width * height > options.max_pixels:
        raise ImageTooLarge(
            f"image too large: {width}x{height} = {width * height} pixels > {options.max_pixels} "
            "(possible decompression bomb)"
        )
    if max(width, height) > options.max_side:
        raise ImageTooLarge(f"absurd dimensions {width}x{height} (longest side > {options.max_side})")


def _decode_pil(image: Image.Image, options: DecodeOptions) -> LoadedImage:
    """A PIL image -> the builder's pixels (the caller's image is not modified)."""
    filename = getattr(image, "filename", "") or ""
    unloaded = bool(getattr(image, "tile", None))
    if unloaded and filename and os.path.isfile(filename):
        loaded = load_image(filename, options)  # exactly what the builder did with that file
        return dataclasses.replace(loaded, sha256=None, size=None)
    data = _unread_bytes(image) if unloaded else None
    if data is not None:  # opened from bytes (an upload) and not decoded yet: decode those bytes
        return _decode(data, options)
    width, height = image.size
    _check_size(width, height, options)
    try:
        if getattr(image, "n_frames", 1) > 1 and image.tell() != 0:
            image = image.copy()
            image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise DecodeError(f"corrupt image data: {str(exc) or type(exc).__name__}") from None
    try:
        upright = ImageOps.exif_transpose(image)  # a new image; the orientation tag is consumed
    except Exception:  # malformed EXIF: keep the stored orientation, like the builder
        upright = image
    if upright is None or upright is image:
        upright = image.copy()  # the caller's image stays the caller's
    size = upright.size
    side = options.min_side
    if side and image.format == "JPEG" and min(width, height) >= 2 * side:
        # the builder decoded this file at the DCT scale `draft` picks; a box reduction by the same
        # factor is the closest a decoded image can come to it
        shortest = min(width, height)
        wanted = (math.ceil(width * side / shortest), math.ceil(height * side / shortest))
        ratio = min(width // wanted[0], height // wanted[1])
        scale = next(s for s in (8, 4, 2, 1) if ratio >= s)
        if scale > 1:
            upright = convert_rgb(upright, options.rgb).reduce(scale)
    return _converted(upright, size, options)


def _unread_bytes(image: Image.Image) -> bytes | None:
    """The encoded bytes behind a PIL image opened from a file object and not decoded yet, or None."""
    fp = getattr(image, "fp", None)
    if fp is None or not hasattr(fp, "seek") or not hasattr(fp, "read"):
        return None
    try:
        position = fp.tell()
        fp.seek(0)
        data = fp.read()
        fp.seek(position)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, bytes) and data else None


def decode_in_words(settings: Any) -> str:
    """How an index decodes its files, for ``info`` (``settings``: the manifest's `Settings`)."""
    decode = DecodeOptions(**settings.decode) if settings.decode else DecodeOptions()
    rgb = f"other modes {'to RGB by counterclip' if decode.rgb == 'robust' else 'as ' + decode.rgb}"
    if decode.min_side is None:
        return f"exact: the files' pixels, {rgb} ({RGB_RULES[decode.rgb].split(' (')[0]})"
    check = getattr(settings, "decode_check", None)
    if not check:
        return (
            f"shrinks large images to {decode.min_side} px before the model's preprocessing (built before the "
            "exact decode was the default; its vectors are verified the way they were made)"
        )
    from counterclip.index_builder.agreement import Agreement

    figures = Agreement(check["samples"], check["lowest"], check["median"], check["bound"])
    return f"fast (JPEG draft, box reduce to {decode.min_side} px): {figures.in_words()} to the exact decode"
