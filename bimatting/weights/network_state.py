"""A network from (arch, config) and a state dict loaded into it, with one-line errors naming the file.

Shared by the two checkpoint formats: project checkpoints and official state dicts
(bimatting.weights.checkpoints) and packed .npz files (bimatting.weights.packed). Torch is imported only when a
state is loaded, so importing this module (and bimatting.weights.packed) stays torch-free.
"""

from bimatting.errors import InputError
from bimatting.models import build_model, model_class


def build_network(arch, config, path):
    """build_model(arch, **config); InputError naming `path` when the config does not fit."""
    try:
        return build_model(arch, **config)
    except TypeError as error:
        raise InputError(
            f"checkpoint '{path}' has a config {config} that {arch} does not accept ({error}); "
            "expected the constructor arguments of the saved network"
        ) from None


def load_state(model, state, arch, path):
    """Strict load with one readable line about every mismatch (BN counters may be absent)."""
    import torch  # here, not at the top: bimatting.weights.packed imports this module and stays torch-free

    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    not_tensors = [k for k in state if k in expected and not isinstance(state[k], torch.Tensor)]
    wrong = [
        f"{k} {list(state[k].shape)} != {list(expected[k].shape)}"
        for k in expected
        if k in state and k not in not_tensors and state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("not a tensor", not_tensors),
        ("wrong shape", wrong),
    ):
        if items:
            problems.append(f"{len(items)} {label} ({first_items(items)})")
    if problems:
        raise InputError(
            f"'{path}' does not fit the {arch} network: {'; '.join(problems)}; "
            f"expected a state_dict of {model_class(arch).__name__}"
        )
    model.load_state_dict(state, strict=False)  # strictness checked above


def first_items(items, count=3):
    """The first `count` items, comma separated (for one-line error messages)."""
    shown = ", ".join(str(item) for item in items[:count])
    return shown + (", ..." if len(items) > count else "")
