"""The recurrent call of a matting network: the one place that carries its states r1..r4.

RVM's convention is `fgr, pha, r1, r2, r3, r4 = model(src, r1, r2, r3, r4, downsample_ratio=s)`,
the states one call returns fed to the next, None states (a clip's first call) read as zeros.
Every loop that runs a PyTorch network over frames steps through `recurrent_step`: the matte
application's torch backend, the evaluation (`bimatting test`, the agreement with a teacher), the
teacher's labels and `export --verify`. It imports nothing (the network does the tensor work), so
torch-free modules may import it.
"""


def recurrent_step(model, src, states, downsample_ratio, **options):
    """One call of `model` on `src` after the call that returned `states`: (outputs, next states).

    src: float32 [B, 3, H, W] (one frame) or [B, T, 3, H, W] (T frames) in [0, 1]; states: the
    list r1..r4 of the previous call, or None before a clip's first call; options: more keywords
    for the network (BiMatting's return_coarse). outputs: what the network returns, fgr and pha
    first (BiMatting adds fgr_s and pha_s unless return_coarse=False); next states: its last four
    outputs, as a list.
    """
    outputs = model(src, *(states or [None] * 4), downsample_ratio=downsample_ratio, **options)
    return outputs, list(outputs[-4:])
