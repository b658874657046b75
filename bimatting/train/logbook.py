"""What a training run reports: a CSV row per pass, a progress bar, a JSON summary (rank 0 only)."""

import csv
import json
import sys
import time
from pathlib import Path

from bimatting.atomic import atomic_path

COLUMNS = (
    "step",
    "epoch",
    "pass",
    "seconds",
    "total",
    "pha_l1",
    "pha_laplacian",
    "pha_coherence",
    "fgr_l1",
    "fgr_coherence",
    "coarse_total",
    "distill_total",
    "seg_bce",
)


class CsvLog:
    """A CSV log that a resumed run continues: rows at or after `start_step` (written after the
    last saved state by a run that was stopped) are dropped first, so each step appears once.
    Numbers are written with 6 significant digits, None as an empty cell, text as it is."""

    def __init__(self, path, columns, start_step):
        self.path, self.columns = Path(path), tuple(columns)
        kept = []
        if self.path.is_file():
            with open(self.path, newline="") as handle:
                kept = [row for row in csv.DictReader(handle) if row.get("step") and float(row["step"]) < start_step]
        self.handle = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.columns, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(kept)
        self.handle.flush()

    def write(self, row, flush=True):
        self.writer.writerow({key: _cell(row.get(key)) for key in self.columns})
        if flush:
            self.handle.flush()

    def flush(self):
        self.handle.flush()

    def close(self):
        self.handle.close()


def _cell(value):
    if value is None:
        return ""
    return value if isinstance(value, str) else f"{value:.6g}"


class Logbook:
    """CSV log `<out>/train_log.csv` (appended across resumes; rows at or after the resume step
    are dropped first) and a tqdm bar with the last losses."""

    def __init__(self, out, start_step, total_steps, enabled=True, progress=True):
        self.enabled = enabled
        self.path = Path(out) / "train_log.csv"
        self.started = time.perf_counter()
        self.bar = None
        if not enabled:
            return
        self.log = CsvLog(self.path, COLUMNS, start_step)
        if progress:
            try:
                from tqdm import tqdm  # noqa: PLC0415 - optional on bare training machines

                self.bar = tqdm(
                    total=total_steps,
                    initial=start_step,
                    desc="train",
                    unit="step",
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
            except ImportError:  # tqdm is optional on bare training machines
                self.bar = None

    def record(self, step, epoch, name, terms, seconds):
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch, "pass": name, "seconds": f"{seconds:.4f}"}
        row.update({key: f"{float(value):.6g}" for key, value in terms.items() if key in COLUMNS})
        self.log.write(row, flush=False)

    def step_done(self, step, losses):
        if not self.enabled:
            return
        self.log.flush()
        text = " ".join(f"{name}={value:.4f}" for name, value in losses.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text)
        elif step % 10 == 0:
            print(f"step {step} {text}", file=sys.stderr, flush=True)

    def note(self, message):
        if self.enabled:
            (self.bar.write if self.bar is not None else lambda m: print(m, file=sys.stderr))(message)

    def close(self):
        if self.enabled:
            if self.bar is not None:
                self.bar.close()
            self.log.close()


def write_summary(path, summary):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
