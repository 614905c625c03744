"""evals/fidelity/streaming_vlm.py against the published StreamingVLM code: over 40 rounds of every
setting, our kept token ids, their original indices (K/V) and their M-RoPE positions equal what
the published ``process_past_kv`` keeps and ``get_rope_index`` gives.

Runs when ``STREAM_FIDELITY_STREAMING_VLM`` names a working tree of mit-han-lab/streaming-vlm
(never copied here), e.g. ``git -C <mirror> worktree add /tmp/streaming-vlm a940d8c``; skipped
otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from framestream.evals.fidelity.streaming_vlm import SETTINGS, compare

CHECKOUT = os.environ.get("STREAM_FIDELITY_STREAMING_VLM")
CHECKS = ("ids_equal", "indices_equal", "positions_equal", "within_worst_case")

pytestmark = pytest.mark.skipif(
    not CHECKOUT or not (Path(CHECKOUT) / "streaming_vlm" / "inference" / "inference.py").is_file(),
    reason="STREAM_FIDELITY_STREAMING_VLM does not name a streaming-vlm working tree",
)


def test_kept_tokens_equal_the_published_bookkeeping() -> None:
    report = json.loads(json.dumps(compare(Path(CHECKOUT), rounds=40, seed=0)))  # JSON-able
    assert report["pipeline"] == "streaming_vlm"
    assert report["commit"] is None or len(report["commit"]) == 40
    assert len(report["rounds"]) == 40 * len(SETTINGS)
    differing = [r for r in report["rounds"] if not all(r[c] for c in CHECKS)]
    assert report["all_equal"] and not differing, differing[:5]
    # the rounds reach steady state: the kept sequence stops growing once evictions run
    for name in SETTINGS:
        kept = [r["kept_tokens"] for r in report["rounds"] if r["setting"] == name]
        assert max(kept[-10:]) < 2 * min(kept[-10:]), (name, kept)
    # the import left nothing behind: no stub, no published module, no path entry
    assert not any(m.split(".")[0] in ("streaming_vlm", "qwen_vl_utils") for m in sys.modules)
    assert str(Path(CHECKOUT).resolve()) not in sys.path
