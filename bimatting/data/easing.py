"""Easing curves for motion augmentation: maps progress t in [0, 1] to [0, 1]-ish (0 -> 0, 1 -> 1).

RVM's motion augmentation interpolates between two random augmentation parameter sets along one
of 30 easing curves (Robert Penner's families: back, bounce, circular, cubic, exponential,
elastic, quad, quartic, quintic, sine; each as in / out / in-out) or a Step, and uses linear 20%
of the time (RVM `dataset/augmentation.py`, which imports the `easing_functions` package; the
curves here are the textbook formulas, written for this project).

Every family is defined once by its "in" curve; out(t) = 1 - in(1 - t) and
in_out(t) = in(2t)/2 for t < 1/2, 1 - in(2 - 2t)/2 otherwise.
Back and elastic overshoot [0, 1] on purpose (a motion that goes a little past its target).
"""

import math
import random


def _back(t):
    return t**3 - t * math.sin(t * math.pi)


def _bounce(t):
    # Penner's bounce-in = 1 - bounce-out(1 - t); bounce-out is four parabolic arcs.
    u = 1 - t
    if u < 4 / 11:
        out = 121 * u * u / 16
    elif u < 8 / 11:
        out = 363 / 40 * u * u - 99 / 10 * u + 17 / 5
    elif u < 9 / 10:
        out = 4356 / 361 * u * u - 35442 / 1805 * u + 16061 / 1805
    else:
        out = 54 / 5 * u * u - 513 / 25 * u + 268 / 25
    return 1 - out


def _circular(t):
    return 1 - math.sqrt(max(0.0, 1 - t * t))


def _exponential(t):
    return 0.0 if t <= 0 else 2 ** (10 * (t - 1))


def _elastic(t):
    return math.sin(13 * math.pi / 2 * t) * 2 ** (10 * (t - 1))


def _sine(t):
    return 1 - math.cos(t * math.pi / 2)


FAMILIES = {
    "back": _back,
    "bounce": _bounce,
    "circular": _circular,
    "cubic": lambda t: t**3,
    "exponential": _exponential,
    "elastic": _elastic,
    "quad": lambda t: t * t,
    "quartic": lambda t: t**4,
    "quintic": lambda t: t**5,
    "sine": _sine,
}


def ease_in(curve):
    return lambda t: curve(min(max(t, 0.0), 1.0))


def ease_out(curve):
    return lambda t: 1 - curve(1 - min(max(t, 0.0), 1.0))


def ease_in_out(curve):
    def eased(t):
        t = min(max(t, 0.0), 1.0)
        return curve(2 * t) / 2 if t < 0.5 else 1 - curve(2 - 2 * t) / 2

    return eased


def linear(t):
    return min(max(t, 0.0), 1.0)


def step(t):
    """A sudden change half-way (RVM's custom `Step`)."""
    return 0.0 if t < 0.5 else 1.0


# name -> curve: the 30 Penner curves ("quad_in", "bounce_in_out", ...)
EASINGS = {
    f"{name}_{kind}": make(curve)
    for name, curve in FAMILIES.items()
    for kind, make in (("in", ease_in), ("out", ease_out), ("in_out", ease_in_out))
}


def random_easing(rng=random):
    """Linear with probability 0.2, else one of the 30 Penner curves or Step, uniformly (RVM)."""
    if rng.random() < 0.2:
        return linear
    choices = list(EASINGS.values()) + [step]
    return choices[rng.randrange(len(choices))]


def lerp(a, b, fraction):
    return a * (1 - fraction) + b * fraction
