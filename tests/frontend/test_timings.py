"""The compile-time breakdown: kiln.compile records it, `kiln inspect --timings` prints it."""
import torch

import kiln
from kiln import cli
from tests.conftest import fn_module as Fn


def test_compile_records_where_time_went():
    model = Fn(lambda m, x: torch.softmax(x @ m.w, -1), w=torch.randn(4, 5))
    sess = kiln.compile(model, (torch.randn(3, 4),))
    ms = sess.meta["compile_ms"]
    from kiln.passes.pipeline import STAGE_NAMES
    assert set(ms) == {"torch.export", "decompose", "convert", "total"} | {f"stage:{s}" for s in STAGE_NAMES}
    assert all(v >= 0 for v in ms.values())
    assert ms["total"] >= ms["torch.export"] + ms["convert"] > 0


def test_inspect_timings_prints_every_step(capsys):
    assert cli.main(["inspect", "llama", "--layers", "1", "--timings"]) == 0
    out = capsys.readouterr().out
    for step in ("torch.export", "decompose", "convert", "stage:canonicalize", "stage:cleanup", "plan", "total"):
        assert f"  {step} " in out, step
    assert "compile / torch.export = " in out
    assert "run_decompositions was needed" not in out   # the Llama family converts as captured
