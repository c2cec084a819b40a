"""Turning what users pass as images (PIL in any mode, numpy, tensors, paths, file URLs) into RGB inputs.

Errors name the image (its path, or its position in the batch) and what was wrong with it.
"""

import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


def _describe(image: Any, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return f"image {index} ({os.fspath(image)!r})"
    return f"image {index} ({type(image).__name__})"


def load_image(image: Any, index: int = 0) -> Any:
    """One image -> an RGB `PIL.Image`, or the array / tensor itself after checks.

    Accepts `PIL.Image` (RGBA, LA, P, L, CMYK... converted with `.convert("RGB")`, as the original and
    transformers do), a path, a `file://` URL, a numpy array or a torch tensor: (H, W) grayscale, or
    HWC / CHW with 1, 3 channels, or 2 / 4 with alpha (dropped, as PIL's conversion does). Zero-sized,
    unreadable or corrupt images raise `ValueError` naming the image.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path.startswith("file://"):
            path = path[len("file://"):]
        elif "://" in path:
            raise ValueError(
                f"{_describe(image, index)}: only local files can be read (no network); download it and pass the path."
            )
        if not os.path.isfile(path):
            raise ValueError(f"{_describe(image, index)}: no such file.")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(f"{_describe(path, index)}: not a readable image ({err}).") from err
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{_describe(image, index)}: zero-sized image ({image.width}x{image.height}).")
        # As the original LLaVA and transformers: `.convert("RGB")`, which drops the alpha channel (the
        # colour under transparent pixels shows) rather than compositing over a background.
        return image if image.mode == "RGB" else image.convert("RGB")
    if hasattr(image, "shape"):  # numpy array or torch tensor
        shape = tuple(image.shape)
        if len(shape) not in (2, 3) or 0 in shape:
            raise ValueError(
                f"{_describe(image, index)}: expected an (H, W), (H, W, C) or (C, H, W) array, got shape {shape}."
            )
        if len(shape) == 2:  # grayscale, as PIL's "L" -> RGB
            return np.repeat(np.asarray(image)[..., None], 3, axis=-1)
        if shape[-1] in (2, 4) and shape[0] not in (1, 3):  # (H, W, LA / RGBA): drop alpha, as PIL's convert
            array = np.asarray(image)[..., :-1]
            return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array
        if shape[0] in (2, 4) and shape[-1] not in (1, 3):  # (LA / RGBA, H, W)
            array = np.asarray(image)[:-1]
            return np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array
        return image
    raise ValueError(
        f"{_describe(image, index)}: unsupported image type; pass a PIL.Image, a numpy array, a torch tensor "
        "or a path to an image file."
    )


# Provenance: LLaVA's `llava/mm_utils.py` `expand2square`, what its training data pipeline runs before the image
# processor for `image_aspect_ratio="pad"` (with the processor's mean colour), whatever the image processor is.
def expand_to_square(image: Image.Image, background: tuple) -> Image.Image:
    """`image` centred on a square canvas of colour `background` (side: its longer edge); square images as they are."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def mean_colour(image_processor) -> tuple:
    """The image processor's `image_mean` as 0-255 integers: LLaVA-1.5's padding colour ((122, 116, 104) for CLIP)."""
    mean = getattr(image_processor, "image_mean", None)
    if mean is None:
        raise ValueError(f"{type(image_processor).__name__} has no image_mean, the colour images are padded with; "
                         "use an image processor that normalises with a mean (CLIP, SigLIP).")
    return tuple(int(x * 255) for x in mean)


def load_images(images: Any) -> list:
    """A single image or a (nested) list of images -> a flat list of loaded images, in order."""
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        images = [images]
    flat = []
    for item in images:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
        else:
            flat.append(item)
    return [load_image(image, i) for i, image in enumerate(flat)]


__all__ = ["expand_to_square", "load_image", "load_images", "mean_colour"]
