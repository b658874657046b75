"""Sign health: is each binary layer of a BiMatting still able to learn?

Per sign site (a learnable threshold and the binary convs reading its sign, see
BiMatting.sign_sites), measured on one forward pass of real data:
    in_window      fraction of sign inputs with |x| <= 1: only those pass a gradient through the
                   clipped straight-through estimator (d sign(x)/dx := 1{|x| <= 1})
    near_zero      fraction with |x| < 1e-3: decisions that float rounding can flip between
                   runtimes
    dead_channels  fraction of channels whose sign is the same at every position of every call
                   in the pass (a constant: it carries no information). Every call counts
                   together: a GRU's sites are called once per frame, and at the first frame
                   the hidden half of their input is the zero state, constant by construction
                   (counted per call, that half read as 25-34 % dead channels on real footage;
                   at the second frame 0-13 %)
and per binary conv, between two readings:
    flips_per_1k   fraction of latent weight signs that changed, per 1,000 steps
A site is *dead* when fewer than 1 % of its inputs are inside the STE window or all its channels
are constant: no gradient reaches what is upstream of it through this sign.
"""

import torch

DEAD_WINDOW = 0.01


class SignHealth:
    def __init__(self, model):
        self.model = model
        self.sites = model.sign_sites()
        self._last_signs, self._last_step = None, None

    @torch.no_grad()
    def measure(self, forward):
        """Run `forward()` once with hooks on every threshold; returns {site: stats}.
        The model's buffers (BatchNorm running statistics, which a train-mode forward updates) are
        restored afterwards, so measuring does not change the run."""
        stats, handles = {}, []
        buffers = {key: value.clone() for key, value in self.model.named_buffers()}

        def hook_for(name):
            def hook(module, args, output):
                x = output.detach().float()
                positive = x.transpose(0, 1).flatten(1) >= 0  # [C, N*h*w]
                entry = stats.setdefault(
                    name, {"count": 0, "in_window": 0.0, "near_zero": 0.0, "any_positive": False, "any_negative": False}
                )
                entry["in_window"] += float((x.abs() <= 1).sum())
                entry["near_zero"] += float((x.abs() < 1e-3).sum())
                entry["any_positive"] = entry["any_positive"] | positive.any(dim=1)  # [C], over every call
                entry["any_negative"] = entry["any_negative"] | (~positive).any(dim=1)
                entry["count"] += x.numel()

            return hook

        for name, threshold, _ in self.sites:
            handles.append(threshold.register_forward_hook(hook_for(name)))
        try:
            forward()
        finally:
            for handle in handles:
                handle.remove()
            for key, value in self.model.named_buffers():
                value.copy_(buffers[key])
        report = {}
        for name, entry in stats.items():
            in_window = entry["in_window"] / entry["count"]
            dead_channels = float((~(entry["any_positive"] & entry["any_negative"])).float().mean())
            report[name] = {
                "in_window": in_window,
                "near_zero": entry["near_zero"] / entry["count"],
                "dead_channels": dead_channels,
                "dead": in_window < DEAD_WINDOW or dead_channels >= 1.0,
            }
        return report

    @torch.no_grad()
    def latent_flips(self, step):
        """{conv name: flips per 1k steps since the previous call} ({} on the first call)."""
        signs = {name: conv.centred_weight() >= 0 for name, conv in self.model.binary_convs()}
        flips = {}
        if self._last_signs is not None and step > self._last_step:
            scale = 1000.0 / (step - self._last_step)
            flips = {name: float((signs[name] != self._last_signs[name]).float().mean()) * scale for name in signs}
        self._last_signs, self._last_step = signs, step
        return flips


def summarize(report, flips=None):
    """One line: medians over sites, and the dead sites by name."""
    if not report:
        return "sign health: no sites measured"
    values = lambda key: sorted(entry[key] for entry in report.values())  # noqa: E731
    median = lambda xs: xs[len(xs) // 2]  # noqa: E731
    line = (
        f"sign health: {len(report)} sites, median in-window {median(values('in_window')):.1%}, "
        f"near-zero {median(values('near_zero')):.2%}, dead channels {median(values('dead_channels')):.1%}"
    )
    if flips:
        line += f", latent flips/1k steps {median(sorted(flips.values())):.2%}"
    dead = [name for name, entry in report.items() if entry["dead"]]
    line += f"; dead: {', '.join(dead)}" if dead else "; no dead branch"
    return line


def table(report, flips=None):
    """Rows for a --diagnose report: site, in-window, near-zero, dead channels, flips, dead."""
    rows = []
    for name, entry in report.items():
        rows.append({"site": name, **{k: entry[k] for k in ("in_window", "near_zero", "dead_channels", "dead")}})
    if flips:
        rows.append({"latent_flips_per_1k_steps": flips})
    return rows
