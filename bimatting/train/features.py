"""Feature distillation: intermediate features of the student matched to the teacher's.

Taps are read with forward hooks, by module name, on both networks (RVM and BiMatting name their
parts alike):
    encoder   f1, f2, f3 (the decoder's inputs) and f4 (the ASPP's input): widths differ
              (BiMatting 16/32/64/1024, RVM 16/24/40/960), so they are compared through
              attention maps
    decoder   ASPP output (128), decode4 (128), decode3 (80), decode2 (40), decode1 (32),
              decode0 (16): widths equal RVM's, so they are matched directly

Direct term, per tap (normalised so every scale weighs alike, whatever its magnitude):
    L_d = mean((s - t)^2) / (mean(t^2) + eps)
Attention term (Zagoruyko & Komodakis, ICLR 2017; Real-to-Binary, Martinez et al., ICLR 2020):
    Q = mean_c(x^2) flattened per frame,  L_a = mean_frames || Q_s/||Q_s|| - Q_t/||Q_t|| ||_2
Each term averages over its taps; the teacher's maps are resized to the student's size if the
two differ by rounding.
"""

import torch
from torch.nn import functional as F

DIRECT_TAPS = ("aspp", "decoder.decode4", "decoder.decode3", "decoder.decode2", "decoder.decode1", "decoder.decode0")
ATTENTION_TAPS = ("f1", "f2", "f3", "f4")


class FeatureTaps:
    """Records the features of one forward of `model`: {tap name: tensor [N, C, h, w]}.

    Use as a context manager around the forward; `features` holds the last call's values (for
    modules called once per forward: all of these are)."""

    def __init__(self, model, direct=True, attention=True):
        self.model, self.direct, self.attention = model, direct, attention
        self.features, self.handles = {}, []

    def __enter__(self):
        modules = dict(self.model.named_modules())
        if self.direct:
            for name in DIRECT_TAPS:
                self.handles.append(modules[name].register_forward_hook(self._keep(name)))
        if self.attention:
            self.handles.append(modules["decoder"].register_forward_pre_hook(self._keep_decoder_inputs))
            self.handles.append(modules["aspp"].register_forward_pre_hook(self._keep_aspp_input))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _keep(self, name):
        def hook(module, args, output):
            self.features[name] = output[0] if isinstance(output, tuple) else output

        return hook

    def _keep_decoder_inputs(self, module, args):
        # decoder(s0, f1, f2, f3, f4, ...) in both networks
        self.features.update(f1=args[1], f2=args[2], f3=args[3])

    def _keep_aspp_input(self, module, args):
        self.features["f4"] = args[0]


def _match_size(teacher, student):
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    return teacher


def direct_loss(student, teacher, eps=1e-6):
    terms = []
    for name in DIRECT_TAPS:
        s, t = student[name].float(), _match_size(teacher[name].float(), student[name])
        terms.append((s - t).pow(2).mean() / (t.pow(2).mean() + eps))
    return sum(terms) / len(terms)


def attention_map(x):
    """[N, C, h, w] -> unit-norm [N, h*w] of mean_c(x^2)."""
    q = x.float().pow(2).mean(dim=1).flatten(1)
    return q / (q.norm(dim=1, keepdim=True) + 1e-8)


def attention_loss(student, teacher):
    terms = []
    for name in ATTENTION_TAPS:
        t = _match_size(teacher[name].float(), student[name])
        terms.append((attention_map(student[name]) - attention_map(t)).norm(dim=1).mean())
    return sum(terms) / len(terms)


def feature_distillation(student, teacher, direct_weight, attention_weight):
    """{'feature_direct', 'feature_attention', 'feature_total'} weighted (0 where a weight is 0)."""
    zero = next(iter(student.values())).new_zeros(())
    direct = direct_weight * direct_loss(student, teacher) if direct_weight else zero
    attention = attention_weight * attention_loss(student, teacher) if attention_weight else zero
    return {"feature_direct": direct, "feature_attention": attention, "feature_total": direct + attention}


# -- encoder features through training-only adapters -------------------------------------------

ADAPTER_TAPS = ("f2", "f3", "f4")  # the encoder at 1/4, 1/8 and 1/16 of the network's input


class EncoderAdapters(torch.nn.Module):
    """One training-only 1x1 conv per encoder tap, student width -> teacher width (BiMatting
    32/64/1024 -> RVM 24/40/960). They let the binary encoder be told what the teacher's encoder
    sees at each scale without forcing its own widths; they are never part of the exported network.

    L_adapt = 1/3 sum_{tap} mean((A_tap(s_tap) - t_tap)^2) / (mean(t_tap^2) + eps)
    (the direct term's normalisation, so every scale weighs alike)."""

    def __init__(self, student_widths, teacher_widths):
        super().__init__()
        self.convs = torch.nn.ModuleDict(
            {tap: torch.nn.Conv2d(student_widths[tap], teacher_widths[tap], 1) for tap in ADAPTER_TAPS}
        )

    @classmethod
    def between(cls, student, teacher, size=64):
        """Adapters sized from one forward of both networks on a blank frame."""
        widths = []
        for model in (student, teacher):
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad(), FeatureTaps(model, direct=False, attention=True) as taps:
                    model(torch.zeros(1, 3, size, size))
            finally:
                model.train(was_training)
            widths.append({tap: taps.features[tap].shape[1] for tap in ADAPTER_TAPS})
        return cls(*widths)

    def loss(self, student, teacher, eps=1e-6):
        terms = []
        for tap in ADAPTER_TAPS:
            s = self.convs[tap](student[tap].float())
            t = _match_size(teacher[tap].float(), s)
            terms.append((s - t).pow(2).mean() / (t.pow(2).mean() + eps))
        return sum(terms) / len(terms)
