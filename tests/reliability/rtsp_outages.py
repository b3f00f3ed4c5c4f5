"""Kill the RTSP camera several times during a long ``fuselite run`` and measure the recovery.

    python tests/reliability/rtsp_outages.py --seconds 120 --outage-seconds 3 6 10

The camera (ffmpeg on 127.0.0.1, see ``stream_faults.py``) dies and comes back at evenly
spread moments; the runtime must reconnect every time, and the gap in its annotation
events around an outage must stay within the outage plus the reconnect backoff plus
the time to reopen the stream.  Prints a Markdown table; ``--json`` keeps the numbers.
Without ``--bundle`` it builds the fp32 colour test bundle (``tests/support/bundles.py``, needs TensorFlow).
Exit code 1 when a contract is broken.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from reliability_support import machine_description
from stream_faults import make_h264_clip, markdown, run_with_outages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the run")
    parser.add_argument("--outage-seconds", type=float, nargs="+", default=[3.0, 6.0, 10.0],
                        help="how long the camera stays dead, one number per outage")
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: built here)")
    parser.add_argument("--reconnect-delay", type=float, default=0.5)
    parser.add_argument("--reconnect-max-delay", type=float, default=10.0)
    parser.add_argument("--stream-timeout", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rtsp-outages-") as tmp:
        workdir = Path(tmp)
        bundle = args.bundle or _build_bundle(workdir)
        clip = make_h264_clip(workdir / "clip.mp4")
        report = run_with_outages(
            bundle, clip, workdir, args.seconds, args.outage_seconds,
            reconnect_delay=args.reconnect_delay, reconnect_max_delay=args.reconnect_max_delay,
            stream_timeout=args.stream_timeout,
        )
    print(markdown(report))
    print(f"\n{report.frames} frames annotated, {report.annotations} events written, "
          f"in {report.seconds:.0f} s; "
          f"reconnects counted {report.reconnects}, 'lost the stream' logged {report.lost_logged}; "
          f"largest gap away from the outages {report.max_other_gap:.2f} s; exit {report.returncode}")
    problems = report.problems()
    print("problems: " + ("; ".join(problems) if problems else "none"))
    if args.json:
        data = report.to_dict()
        data.update(machine=machine_description(), date=time.strftime("%Y-%m-%d"),
                    arguments={k: str(v) for k, v in vars(args).items()})
        args.json.write_text(json.dumps(data, indent=1))
    return 1 if problems else 0


def _build_bundle(folder: Path) -> Path:
    from support.bundles import build_colour_bundles

    return build_colour_bundles(folder / "bundles")["fp32"]


if __name__ == "__main__":
    sys.exit(main())
