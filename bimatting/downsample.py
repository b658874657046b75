"""RVM's automatic downsample ratio, the one rule every part of the chain applies.

The matte application, the evaluation, the teacher's labels, `export --verify` and the compiler
(`deploy/compiler/shapes.py`) all use it, so this module imports nothing: deploy/ runs on boards
without torch.
"""

AUTO_LONG_SIDE = 512  # the network's low-resolution pass sees the long side at <= 512 px


def auto_downsample_ratio(height, width):
    """RVM's inference rule (inference.py `auto_downsample_ratio(h, w)`): s = min(512 / max(h, w), 1),
    the downsample ratio its "auto" setting uses for a frame of height x width."""
    return min(AUTO_LONG_SIDE / max(height, width), 1.0)
