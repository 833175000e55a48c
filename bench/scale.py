"""The scale map (docs/scale.md): time and peak memory of every pipeline stage as the log grows.

For each ``--rows`` size: write a synthetic log in the files source's format (bench/scale_data.py:
vectorised numpy + Arrow, ``--days`` day partitions, users and ads scaled with the rows), then run each
stage of bench/scale_stages.py in a FRESH child process, one after the other, on a home under
``--work`` (default /tmp/adsrec-scale):

    generate, deliver, ingest, features, interest (user x category stats), representations,
    training_set, encode, train (per epoch), evaluate, register, materialise, serve

Per stage it records the stage's own seconds (measured in the child, imports excluded), the child's
peak RSS (``os.wait4``'s ``ru_maxrss``: the process's high-water mark, imports included; the child's
RSS after its imports is ``rss_before_mb``) and the 1-minute load average before and after (the box is
shared). A stage past ``--timeout`` seconds or ``--mem-cap-mb`` MB of RSS (polled every 0.2 s) is killed
and recorded as ``broke``; the stages that need its output are recorded as not run.

Resumable: each stage's result is ``<results>/<rows>/<stage>.json`` and a finished stage is not re-run
(``--redo`` re-runs them). The home and the log of a size are deleted once all its stages have a
result (``--keep`` keeps them). Progress goes to stderr; bench/scale_report.py fits and plots.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python bench/scale.py --rows 100000
    PYTHONPATH=$PWD nice -n 10 .venv/bin/python bench/scale.py --rows 1000000 10000000 --timeout 360
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("generate", "deliver", "ingest", "features", "interest", "representations", "training_set", "encode",
          "train", "evaluate", "register", "materialise", "serve")
# What each stage reads that an earlier stage writes: a stage whose input broke is not run.
NEEDS = {"deliver": ("generate",), "ingest": ("deliver",), "features": ("ingest",), "interest": ("ingest",),
         "representations": ("features",), "training_set": ("features",), "encode": ("training_set",),
         "train": ("training_set",), "evaluate": ("train",), "register": ("train",), "materialise": ("features",),
         "serve": ("register", "materialise")}
DEFAULT_RESULTS = ROOT / "docs" / "scale" / "results"


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def run_child(args: list[str], log_path: Path, timeout: float, mem_cap_mb: float) -> dict[str, Any]:
    """Run ``args`` in a child; returns exit status, wall seconds, peak RSS (MB, from wait4) and why it
    was killed (None, 'timeout' or 'memory')."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "TQDM_DISABLE": "1"}
    with open(log_path, "w") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                 start_new_session=True)
    t0, killed, seen = time.monotonic(), None, 0.0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        seen = max(seen, _rss_mb(child.pid))
        if killed is None and (time.monotonic() - t0 > timeout or seen > mem_cap_mb):
            killed = "timeout" if time.monotonic() - t0 > timeout else "memory"
            os.killpg(child.pid, signal.SIGKILL)
        time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"exit": child.returncode, "wall_s": round(time.monotonic() - t0, 1),
            "peak_rss_mb": round(max(usage.ru_maxrss / 1024, seen)), "killed": killed}


def run_stage(stage: str, state: dict[str, Any], results: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = results / f"{stage}.json"
    child_out = Path(state["home"]).parent / f"{stage}.child.json"
    child_out.unlink(missing_ok=True)
    state_path = Path(state["home"]).parent / f"{stage}.state.json"
    state_path.write_text(json.dumps({**state, "out": str(child_out)}, default=str))
    load_before = round(os.getloadavg()[0], 2)
    proc = run_child([sys.executable, str(ROOT / "bench" / "scale_stages.py"), stage, str(state_path)],
                     state["log_dir"] / f"{stage}.log", args.stage_timeout.get(stage, args.timeout), args.mem_cap_mb)
    record: dict[str, Any] = {"stage": stage, "rows": state["rows"], "load_before": load_before,
                              "load_after": round(os.getloadavg()[0], 2), **proc}
    if state.get("without_representations"):
        record["note"] = "without the representations' features (that stage did not finish)"
    timeout = args.stage_timeout.get(stage, args.timeout)
    if proc["killed"]:
        limit = f"{timeout:g} s" if proc["killed"] == "timeout" else f"{args.mem_cap_mb:g} MB RSS"
        record.update(status="broke", reason=f"killed at the {proc['killed']} limit ({limit})",
                      seconds=proc["wall_s"])
    elif proc["exit"] != 0 or not child_out.is_file():
        lines = (state["log_dir"] / f"{stage}.log").read_text().splitlines()  # the exception's own line
        errors = [ln for ln in lines if ln[:1].isalpha() and ": " in ln and not ln.startswith("Traceback")]
        record.update(status="failed", reason=f"exit {proc['exit']}: {(errors or ['no error line'])[-1][:300]}")
    else:
        record.update(status="ok", **json.loads(child_out.read_text()))
    out.write_text(json.dumps(record, indent=1, default=str))
    return record


def run_size(rows: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    from bench.scale_data import START, shape, write_config

    results = args.results / str(rows)
    results.mkdir(parents=True, exist_ok=True)
    work = args.work / str(rows)
    (work / "home").mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs" / str(rows)  # kept after the size's home is deleted
    logs.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    state = {**shape(rows, args.days), "home": str(work / "home"), "data": str(data), "epochs": args.epochs,
             "train_cap": args.train_cap, "log_dir": logs, "overrides": args.override,
             "config": str(write_config(work / "scale.yaml", data, args.days)), "first_day": START.isoformat()}
    records: dict[str, dict[str, Any]] = {}
    for stage in args.stages:
        done = results / f"{stage}.json"
        if done.is_file() and not args.redo:
            records[stage] = json.loads(done.read_text())
            if records[stage].get("status") in ("ok", "broke"):
                log(f"{rows:,} rows, {stage}: kept ({records[stage]['status']})")
                continue
        missing = [n for n in NEEDS.get(stage, ()) if n in records and records[n].get("status") != "ok"]
        if missing:
            records[stage] = {"stage": stage, "rows": rows, "status": "not run",
                              "reason": f"{' and '.join(missing)} did not finish"}
            done.write_text(json.dumps(records[stage], indent=1))
            continue
        log(f"{rows:,} rows, {stage}: running (load {os.getloadavg()[0]:.2f})")
        records[stage] = run_stage(stage, state, results, args)
        r = records[stage]
        if stage == "representations" and r["status"] != "ok":
            # A refresh cut short leaves part of <home>/embeddings; without it the training set is built
            # without the SEE similarities, as on a home that never refreshed them (the later stages say so).
            shutil.rmtree(Path(state["home"]) / "embeddings", ignore_errors=True)
            state["without_representations"] = True
        log(f"{rows:,} rows, {stage}: {r['status']} {r.get('seconds', '-')} s, peak {r.get('peak_rss_mb')} MB"
            + (f" ({r['reason']})" if r.get("reason") else ""))
    if not args.keep and all((results / f"{s}.json").is_file() for s in args.stages):
        shutil.rmtree(work, ignore_errors=True)
    return list(records.values())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000], help="impressions over the window, per size")
    ap.add_argument("--days", type=int, default=7, help="days of the window (pipeline.training_days)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs (the figure is per epoch)")
    ap.add_argument("--train-cap", type=int, default=300_000,
                    help="train on a uniform sample of this many training-set rows when it has more (0: all)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--timeout", type=float, default=360.0, help="seconds a stage may take before it is killed")
    ap.add_argument("--stage-timeout", type=json.loads, default={},
                    help='per-stage timeouts overriding --timeout, e.g. \'{"representations": 600}\'')
    ap.add_argument("--mem-cap-mb", type=float, default=16_000.0, help="RSS at which a stage is killed")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results JSON per size and stage")
    ap.add_argument("--work", type=Path, default=Path("/tmp/adsrec-scale"), help="homes and logs (deleted after)")
    ap.add_argument("--override", type=json.loads, default={},
                    help='settings sections merged into every stage\'s, e.g. \'{"representations": {"graph_epochs": 2}}\'')
    ap.add_argument("--redo", action="store_true", help="re-run stages that already have a result")
    ap.add_argument("--keep", action="store_true", help="keep each size's home and log")
    args = ap.parse_args(argv)
    from bench.machine import describe_machine

    args.results.mkdir(parents=True, exist_ok=True)
    machine = args.results / "machine.json"  # the machine, and every command that wrote results here
    runs = json.loads(machine.read_text()).get("commands", []) if machine.is_file() else []
    runs.append({"at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join([Path(sys.executable).name, *sys.argv])})
    machine.write_text(json.dumps({"machine": describe_machine(), "commands": runs}, indent=1))
    for rows in args.rows:
        run_size(rows, args)


if __name__ == "__main__":
    main()
