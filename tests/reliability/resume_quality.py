"""Does ``kill -9`` during training, then ``--resume``, reach the quality of an uninterrupted run?

Trains a config uninterrupted for several seeds (the seed-to-seed spread is the noise any
comparison must allow), once more with seed 0 (is training deterministic at all?), and
then with seed 0 killed with SIGKILL after a given number of finished epochs and resumed
with ``--resume``.  Prints a Markdown table and writes the numbers as JSON.

    python tests/reliability/resume_quality.py --out /tmp/resume --kill-after 2 4 6

Takes about a minute per training of ``scenes-tiny`` on two cores.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_support import fuselite_command, machine_description, quiet_env

METRICS = ("mAP", "heldout_combo_ap", "micro_f1")


def epochs_done(run_dir: Path) -> int:
    """Epochs recorded in the run's checkpoint state (0 before the first)."""
    path = run_dir / "checkpoints" / "state.json"
    try:
        return int(json.loads(path.read_text())["epochs_done"])
    except (OSError, ValueError, KeyError):
        return 0


def train(config: str, run_dir: Path, seed: int, *extra: str, timeout: float = 1800) -> dict:
    """Trains to the end in a subprocess; returns metrics.json."""
    args = ["--config", config, "--out", run_dir, "--seed", seed, *extra]
    done = subprocess.run(fuselite_command("train", *args), capture_output=True, text=True,
                          timeout=timeout, env=quiet_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training {run_dir} failed:\n{done.stderr[-2000:]}")
    return json.loads((run_dir / "metrics.json").read_text())


def train_killed_then_resumed(config: str, run_dir: Path, seed: int, kill_after: int,
                              timeout: float = 1800) -> dict:
    """Trains, SIGKILLs the process once ``kill_after`` epochs are saved, then resumes."""
    args = ["--config", config, "--out", run_dir, "--seed", seed]
    process = subprocess.Popen(fuselite_command("train", *args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=quiet_env())
    deadline = time.monotonic() + timeout
    try:
        while epochs_done(run_dir) < kill_after:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"training ended or stalled before epoch {kill_after}")
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    killed_at = epochs_done(run_dir)
    metrics = train(config, run_dir, seed, "--resume", timeout=timeout)
    history = [h["epoch"] for h in json.loads((run_dir / "history.json").read_text())]
    metrics["killed_after_epoch"] = killed_at
    metrics["history_epochs"] = history
    return metrics


def compare(plain: dict[int, dict], repeat: dict, resumed: dict[int, dict]) -> dict:
    """The spread across seeds, the repeat difference and each resumed run's difference."""
    report = {}
    for name in METRICS:
        values = [m[name] for m in plain.values()]
        report[name] = {
            "seeds": {seed: m[name] for seed, m in plain.items()},
            "seed_spread": max(values) - min(values),
            "repeat_difference": abs(repeat[name] - plain[0][name]),
            "resumed": {k: m[name] for k, m in resumed.items()},
            "resumed_difference": {k: m[name] - plain[0][name] for k, m in resumed.items()},
        }
    return report


def markdown(report: dict, resumed: dict[int, dict]) -> str:
    lines = ["| metric | seed 0 | seed spread | seed 0 again | "
             + " | ".join(f"killed after {k}, resumed" for k in resumed) + " |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in resumed) + " |"]
    for name, row in report.items():
        cells = [f"{row['resumed'][k]:.4f} ({row['resumed_difference'][k]:+.4f})" for k in resumed]
        lines.append(f"| {name} | {row['seeds'][0]:.4f} | {row['seed_spread']:.4f} | "
                     f"diff {row['repeat_difference']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs (new)")
    parser.add_argument("--config", default="scenes-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kill-after", type=int, nargs="+", default=[2, 4, 6],
                        help="finished epochs before the SIGKILL, one run each")
    args = parser.parse_args(argv)
    if 0 not in args.seeds:
        parser.error("--seeds must include 0 (the killed runs use seed 0)")
    args.out.mkdir(parents=True, exist_ok=False)
    started = time.monotonic()
    plain = {s: train(args.config, args.out / f"plain-seed{s}", s) for s in args.seeds}
    repeat = train(args.config, args.out / "plain-seed0-again", 0)
    resumed = {k: train_killed_then_resumed(args.config, args.out / f"killed-after-{k}", 0, k)
               for k in args.kill_after}
    report = compare(plain, repeat, resumed)
    table = markdown(report, resumed)
    print(table)
    for k, m in resumed.items():
        print(f"killed after epoch {m['killed_after_epoch']} (asked {k}): history {m['history_epochs']}")
    result = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
              "config": args.config, "seconds": round(time.monotonic() - started),
              "report": report, "table": table,
              "history": {k: m["history_epochs"] for k, m in resumed.items()}}
    (args.out / "resume_quality.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
