"""What every test folder shares: the test bundles, colour frames and clips, the wheel helpers.

Import it as ``support`` (``from support.bundles import repack``).  Under pytest that
works from every folder because ``tests/conftest.py`` is imported in the default
``prepend`` mode, which puts ``tests/`` on ``sys.path``; the scripts beside the tests
(``tests/reliability/soak.py`` ...) put it there themselves.  Nothing here imports
TensorFlow at import time: ``support.bundles`` loads it only when it builds a model.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
