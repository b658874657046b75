"""The `bimatting` command line: one verb per job, loaded lazily so `--help` stays fast.

Each verb lives in its own module of this package and is a thin wrapper around a library
function. Exit codes: 0 success, 1 the job failed (e.g. verification), 2 bad input or usage.
"""

import importlib
import importlib.util
import sys

import click

from bimatting._version import __version__
from bimatting.errors import BimattingError

# verb -> (module, attribute, one-line summary shown by `bimatting --help` without importing it)
VERBS = {
    "profile": ("bimatting.cli.profile_cmd", "profile", "Count parameters, storage and OPs of a model."),
    "export": ("bimatting.cli.export_cmd", "export", "Export a model to ONNX with packed binary ops."),
    "compile": ("bimatting.cli.compile_cmd", "compile_", "Compile an ONNX model for a board with TVM."),
    "targets": ("bimatting.cli.compile_cmd", "targets", "List the boards a model can be compiled for."),
    "device": ("bimatting.cli.device_cmd", "device", "Run or emulate a board (TVM RPC server)."),
    "tune": ("bimatting.cli.tune_cmd", "tune", "Tune the kernels of a model on a board."),
    "bench": ("bimatting.cli.bench_cmd", "bench", "Measure latency and verify outputs on a board."),
    "matte": ("bimatting.cli.matte_cmd", "matte", "Matte a video, a folder of images or a webcam."),
    "demo": ("bimatting.cli.demo_cmd", "demo", "Run the whole toolchain on packaged sample footage."),
    "train": ("bimatting.cli.train_cmd", "train", "Train BiMatting or RVM (one of RVM's 4 stages)."),
    "distill": ("bimatting.cli.distill_cmd", "distill", "Distil BiMatting from RVM on unlabelled footage."),
    "test": ("bimatting.cli.test_cmd", "test", "Run a model over an evaluation set and score it."),
    "evaluate": ("bimatting.cli.evaluate_cmd", "evaluate", "Score predicted mattes against true ones."),
    "data": ("bimatting.cli.data_cmd", "data", "Make and check datasets (e.g. synthetic composites)."),
}


class LazyGroup(click.Group):
    """A click group whose verbs are imported only when used."""

    def list_commands(self, ctx):
        return [verb for verb in VERBS if self._available(verb)]

    def get_command(self, ctx, name):
        if name not in VERBS:
            return None
        module_name, attribute, _ = VERBS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # verb not built yet
                return None
            raise
        return getattr(module, attribute)

    def format_commands(self, ctx, formatter):
        rows = [(verb, VERBS[verb][2]) for verb in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    @staticmethod
    def _available(verb):
        return importlib.util.find_spec(VERBS[verb][0]) is not None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BimattingError as error:
            # A deliberate error: one line, its exit code, no traceback.
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bimatting")
def cli():
    """Binarized video matting: train, export, compile for ARM boards, bench, matte.

    \b
    Examples:
      bimatting demo                                  # the whole chain on sample footage
      bimatting profile --arch bimatting --json       # sizes and OPs
      bimatting export -o bimatting.onnx              # packaged default model -> ONNX
      bimatting compile bimatting.onnx --target rpi4 -o bimatting-rpi4.tar
      bimatting bench bimatting-rpi4.tar --rpc pi.local:9090
      bimatting matte input.mp4 -o output.mp4
    """


# True in the process the `bimatting` command started (argv from the shell), where a verb may set
# process-wide things (e.g. which TVM libraries load); False when called as a library (tests).
COMMAND_PROCESS = False


def main(argv=None):
    global COMMAND_PROCESS
    COMMAND_PROCESS = argv is None
    # Not click's standalone mode: it turns Ctrl-C into "Aborted!" with exit code 1, which reads
    # like a failure; an interrupted run exits 130 (128 + SIGINT) as shells expect.
    try:
        outcome = cli.main(args=argv, prog_name="bimatting", standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except click.ClickException as error:  # usage errors: click's message, exit 2
        error.show()
        sys.exit(error.exit_code)
    # --help / --version come back as click's exit code; a verb that returns exits 0
    sys.exit(outcome if isinstance(outcome, int) and not isinstance(outcome, bool) else 0)


if __name__ == "__main__":
    main()
