"""A short soak in CI: 6,000 looped frames with every output on; no growth, nothing lost.

The 20,000-frame soak is ``python tests/reliability/soak.py`` (figures in
docs/reliability.md); this one keeps the same checks at a CI length.
"""

from __future__ import annotations

import pytest
from soak import make_looping_source, markdown, run_soak

pytestmark = pytest.mark.slow


def test_a_looping_run_keeps_memory_files_and_threads_flat_and_loses_no_output(
    colour_bundles, tmp_path
):
    source = make_looping_source(tmp_path)
    report = run_soak(colour_bundles["fp32"], source, tmp_path, frames=6000, warmup_frames=1500,
                      sample_seconds=0.1, video=True, preview=True, timeout=300)
    assert report.problems(max_rss_growth_mb=5.0) == [], markdown(report)
    assert len(report.samples) >= 20, "too few samples to judge growth"
    assert report.preview_requests >= 3, "the preview client never got through"
