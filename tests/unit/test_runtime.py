"""astreg.runtime.tune_gc, in a child interpreter (it changes process-wide GC state)."""

import json
import subprocess
import sys

from astreg.runtime import GC_THRESHOLDS


def test_tune_gc_freezes_start_up_objects_and_sets_the_thresholds() -> None:
    code = ("import gc, json; from astreg.runtime import tune_gc; before = gc.get_freeze_count(); tune_gc(); "
            "print(json.dumps([gc.get_threshold(), before, gc.get_freeze_count()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    threshold, before, after = json.loads(out.stdout)
    assert tuple(threshold) == GC_THRESHOLDS
    assert before == 0 and after > 1000  # the interpreter's and astreg's start-up objects
