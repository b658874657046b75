"""The training-recipe options `bimatting distill` and `bimatting train` share, defined once."""

import click

from bimatting.train.settings import Recipe as RECIPE


def recipe_options(teacher_note=""):
    """Decorator adding --threshold-init, --binary-weights-from, --feature-weight and
    --heads-from-teacher. teacher_note: prefix of the teacher-dependent helps, for a verb whose
    teacher is optional (e.g. "With --teacher: ")."""
    feature_help = (
        f"{teacher_note}weight of decoder-feature matching (0 = off)."
        if teacher_note
        else "Weight of decoder-feature matching to the teacher (0 = off)."
    )
    heads_help = "float layers with the teacher's shapes start from its weights."
    heads_help = f"{teacher_note}{heads_help}" if teacher_note else heads_help[0].upper() + heads_help[1:]
    options = [
        click.option(
            "--threshold-init/--no-threshold-init",
            default=RECIPE.threshold_init,
            show_default=True,
            help="Sign thresholds start at minus the per-channel median of their input on the first batch.",
        ),
        click.option(
            "--binary-weights-from",
            type=click.IntRange(0),
            default=RECIPE.binary_weights_from,
            show_default=True,
            help="Two-step training: real weights (binary activations) until this step.",
        ),
        click.option(
            "--feature-weight", type=float, default=RECIPE.feature_weight, show_default=True, help=feature_help
        ),
        click.option(
            "--heads-from-teacher/--no-heads-from-teacher",
            default=RECIPE.heads_from_teacher,
            show_default=True,
            help=heads_help,
        ),
    ]

    def decorate(command):
        for option in reversed(options):  # applied bottom-up: --help lists them in this order
            command = option(command)
        return command

    return decorate
