"""A tuning database folder (written by `bimatting tune`, read by `bimatting compile --tuning-db`).

    DB/database_workload.json        MetaSchedule JSONDatabase: one line per kernel (workload)
    DB/database_tuning_record.json   one line per measured schedule (trace, run times on the board)
    DB/tuning.json                   what was tuned: model sha256, target, resolution, per-task
                                     baseline (the hand-written schedule) and best times, trials

The build pipeline queries every PrimFunc as IRModule({"main": func without global_symbol});
`bimatting tune` commits its workloads in exactly that form, so a record matches only the same
kernel of the same model at the same resolution. MetaSchedule's query ignores the target, so
`check` compares the manifest's target with the one being compiled.
"""

import json
from pathlib import Path

from bimatting.errors import InputError

WORKLOADS, RECORDS, MANIFEST = "database_workload.json", "database_tuning_record.json", "tuning.json"
FORMAT = "bimatting-tuning-db"


def workload(func):
    """The database key of a PrimFunc: what ScheduleModule queries."""
    import tvm

    return tvm.IRModule({"main": func.without_attr("global_symbol")})


def read_manifest(path):
    """The folder's tuning.json as a dict; InputError if `path` is not a tuning database."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"tuning database '{path}' does not exist; create one with `bimatting tune`")
    missing = [name for name in (WORKLOADS, RECORDS, MANIFEST) if not (path / name).is_file()]
    if missing:
        raise InputError(
            f"'{path}' is not a tuning database (it lacks {', '.join(missing)}); "
            "create one with `bimatting tune MODEL -o DB`"
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except ValueError:
        raise InputError(f"'{path / MANIFEST}' is not valid JSON; the tuning database is damaged") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"'{path}' is not a bimatting tuning database (format {manifest.get('format')!r})")
    return manifest


def check(path, target_name, llvm=None):
    """The manifest, after checking that the database was tuned for `target_name` (InputError)."""
    manifest = read_manifest(path)
    tuned = manifest.get("target", {})
    if tuned.get("name") != target_name or (llvm is not None and tuned.get("llvm") != llvm):
        raise InputError(
            f"tuning database '{path}' was tuned for target '{tuned.get('name')}', not "
            f"'{target_name}'; tune for this target first (`bimatting tune --target {target_name}`)"
        )
    return manifest


def open_database(path, module_equality="structural"):
    """The MetaSchedule database of a tuning folder (records are read once, on open)."""
    from tvm.s_tir import meta_schedule as ms

    read_manifest(path)
    return ms.database.JSONDatabase(
        str(Path(path) / WORKLOADS), str(Path(path) / RECORDS), allow_missing=False, module_equality=module_equality
    )


def summary(path):
    """JSON-ready description for an artifact's metadata: which database, tuned how far."""
    manifest = read_manifest(path)
    tasks = list(manifest.get("tasks", {}).values())
    return {
        "database": Path(path).name,
        "target": manifest.get("target", {}).get("name"),
        "model_sha256": manifest.get("model", {}).get("sha256"),
        "trials": manifest.get("trials", 0),
        "tuned_kernels": sum(1 for t in tasks if t.get("best_ms") is not None),
    }
