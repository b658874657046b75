"""COCO run-length encoded masks (YouTubeVIS annotations) -> numpy masks.

A mask of size [H, W] is flattened column-major (Fortran order) and stored as alternating run
lengths of 0s and 1s, starting with 0s. `counts` is either a list of ints (uncompressed RLE, what
YouTubeVIS 2021 ships) or COCO's compressed string: each count is a variable-length signed
integer written in 5-bit groups as characters offset by 48 (bit 0x20 = more groups follow, bit
0x10 of the last group = negative), and counts from the fourth on are stored as differences to
the count two places earlier (pycocotools `rleFrString`, reimplemented here).
"""

import numpy as np


def decode_counts_string(text):
    counts = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend the last group
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode(rle):
    """{'size': [H, W], 'counts': [...] | str} -> [H, W] uint8 mask (255 inside)."""
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = decode_counts_string(counts.decode() if isinstance(counts, bytes) else counts)
    flat = np.zeros(height * width, dtype=np.uint8)
    position = 0
    for run, length in enumerate(counts):
        if run % 2:  # odd runs are the 1s
            flat[position : position + length] = 255
        position += length
    return flat.reshape(width, height).T  # column-major -> [H, W]


def encode_counts(mask):
    """[H, W] mask -> uncompressed counts (column-major runs, starting with 0s)."""
    counts, current, run = [], False, 0
    for value in np.asarray(mask).T.reshape(-1) > 0:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts
