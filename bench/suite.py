"""One entry point for the benchmark scripts, named by what they measure.

    python -m fuselite.bench.suite runtime [ARGS...]   # fuselite run vs raw invoke and the naive loop
    python -m fuselite.bench.suite busy --bundle B [ARGS...]  # the same on a busy machine, fresh processes
    python -m fuselite.bench.suite convert RUN [ARGS...]  # every variant's size, accuracy, numerics
    python -m fuselite.bench.suite train --config NAME --out DIR [ARGS...]  # a training target, from scratch
    python -m fuselite.bench.suite seeds --work-dir DIR [ARGS...]  # distilled tiny vs tiny, several seeds
    python -m fuselite.bench.suite transfer --work-dir DIR [ARGS...]  # + extra pictures the teacher labels
    python -m fuselite.bench.suite int8-agreement RUN --data TEST.jsonl  # int8 vs float, taken apart
    python -m fuselite.bench.suite cameras --bundle B --video V [ARGS...]  # 4 and 8 cameras vs one
    python -m fuselite.bench.suite mqtt --bundle B [ARGS...]  # MQTT's cost to inference; a broker outage
    python -m fuselite.bench.suite explain RUN BUNDLE... [ARGS...]  # label heatmaps: pointing game and cost
    python -m fuselite.bench.suite map-cost RUN [ARGS...]  # a pooled tower's map: invoke and size cost
    python -m fuselite.bench.suite phrases RUN BUNDLE... [ARGS...]  # typed phrases: false firing, recall

``python -m fuselite.bench.suite WHAT --help`` lists the arguments of each.  These
are scripts, not tests: they take minutes and their figures go into the docs with
the machine and the date.  ``fuselite bench`` (the size/accuracy/latency table of a
folder of bundles) is the command for users.
"""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "runtime": ("fuselite.bench.runtime_suite", "fuselite run against raw invoke() and the naive loop"),
    "convert": ("fuselite.bench.convert_suite", "every variant of a run: size, accuracy, numerics"),
    "train": ("fuselite.bench.train_suite", "a training target, from scratch, as a docs row"),
    "busy": ("fuselite.bench.busy_suite", "fuselite run vs the naive loop with one core busy, fresh processes"),
    "sustained": ("fuselite.bench.sustained_suite",
                  "fuselite bench's sustained FPS vs a loop written without fuselite"),
    "explain": ("fuselite.bench.explain_suite", "label heatmaps: pointing game, int8 vs fp32 peaks, their cost"),
    "map-cost": ("fuselite.bench.map_cost_suite", "a pooled tower with and without its class activation map"),
    "phrases": ("fuselite.bench.phrases_suite",
                "typed phrases on a scenes run: false firing and recall, default vs bounded thresholds"),
    "pretrained": ("fuselite.bench.pretrained_suite",
                   "tiny vs EfficientNet-Lite0 vs distilled tiny on real clip art"),
    "seeds": ("fuselite.bench.seeds_suite",
              "distilled tiny vs tiny from scratch over several seeds, on real clip art"),
    "transfer": ("fuselite.bench.transfer_suite",
                 "the tiny tower with extra pictures the teacher labels, and with their true tags"),
    "int8-agreement": ("fuselite.bench.int8_suite",
                       "where int8's top label parts from float's: output, weights, activations, fp16"),
    "cameras": ("fuselite.bench.cameras_suite", "4 and 8 cameras in one process against one camera"),
    "mqtt": ("fuselite.bench.mqtt_suite",
             "fuselite run with MQTT and 1,000 events/s vs without; a 30 s broker outage"),
}


def usage() -> str:
    """The one-screen help listing the suites."""
    lines = ["usage: python -m fuselite.bench.suite {" + ",".join(SUITES) + "} [ARGS...]", ""]
    width = max(map(len, SUITES))
    lines += [f"  {name:<{width}}  {about}" for name, (_module, about) in SUITES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the named suite with the remaining arguments; 2 for an unknown name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUITES:
        print(f"error: unknown suite {name!r}; choose one of: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUITES[name][0])
    code = module.main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
