"""Writes the op bundles for ``devices/verify_arm64.sh`` (the CI verify step).

The builder is :mod:`support.bundles` (``build_op_bundles``); this script keeps the path
and arguments that ``verify_arm64.sh`` calls::

    python tests/devices/devices_testbundle.py --out-dir /tmp/bundles int8 fp32
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `support`

from support.bundles import main

if __name__ == "__main__":
    sys.exit(main(["ops", *sys.argv[1:]]))
