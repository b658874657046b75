"""Parsers of option values several verbs share: one line of InputError naming the fix."""

from bimatting.errors import InputError


def parse_resolution(text):
    """'512x288' -> (512, 288) as (width, height); InputError on anything else."""
    try:
        width, height = (int(part) for part in str(text).lower().split("x"))
    except ValueError:
        raise InputError(f"resolution '{text}' is not WIDTHxHEIGHT; expected e.g. 512x288") from None
    if width <= 0 or height <= 0:
        raise InputError(f"resolution '{text}' must have positive sides; expected e.g. 512x288")
    return width, height


def parse_mask_density(text):
    """'auto' or a float in [0, 1]."""
    if str(text).lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"mask density '{text}' is neither 'auto' nor a number; expected e.g. 0.3") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(f"mask density {value} is outside [0, 1]; it is the fraction of masked positions")
    return value
