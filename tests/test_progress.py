"""The one progress display (resnest_train/progress.py): tqdm's bar on a terminal, plain lines in a log."""

import io
import re

from resnest_train.config import OutputConfig
from resnest_train.monitor import Monitor
from resnest_train.progress import Progress


def test_lines_in_a_log_carry_count_percent_eta_and_rate():
    out = io.StringIO()
    p = Progress(4, "train", unit="img", stream=out, every_s=0.0)
    for i in range(4):
        p.update(1, postfix=f"bad {i}")
    p.close()
    lines = out.getvalue().splitlines()
    assert [re.sub(r"\[.*\]", "[]", line) for line in lines] == [
        "train: 1/4  25% []",
        "train: 2/4  50% []",
        "train: 3/4  75% []",
        "train: 4/4 100% []",
    ]
    assert re.fullmatch(r"train: 4/4 100% \[00:00<00:00, +[\d.]+img/s, bad 3\]", lines[-1])
    assert "\r" not in out.getvalue()


def test_lines_come_every_interval_and_at_the_end():
    out = io.StringIO()
    p = Progress(100, "scan", stream=out, every_s=3600)
    for _ in range(100):
        p.update()
    assert out.getvalue().count("\n") == 1 and out.getvalue().startswith("scan: 100/100 100% [")


def test_a_resumed_start_counts_as_done_but_not_in_the_rate():
    p = Progress(10, "epoch 1/2", stream=io.StringIO(), initial=6)
    p.update(2)
    assert p.n == 8 and p.line().startswith("epoch 1/2: 8/10  80% [")


def test_bar_is_redrawn_in_place_and_disabled_shows_nothing():
    out = io.StringIO()
    p = Progress(3, "epoch 1/1", unit="step", bar=True, stream=out)
    p.update(3, postfix="loss 2.3000")
    p.close()
    text = out.getvalue()
    assert "\r" in text and "3/3" in text and "loss 2.3000" in text and "step/s" in text
    quiet = io.StringIO()
    q = Progress(3, "x", bar=True, stream=quiet, enabled=False)
    q.update(3)
    q.close()
    r = Progress(3, "x", bar=False, stream=quiet, enabled=False)
    r.update(3)
    assert quiet.getvalue() == ""


def test_monitor_bar_and_lines(tmp_path, capsys):
    bar = Monitor(OutputConfig(dir=str(tmp_path / "a"), progress="bar", loggers=[], log_every=2))
    bar.progress(0, 2, 3, 8, 2.5, 0.1, 100.0, 5.0)
    bar.print("between")
    bar.progress(0, 2, 8, 8, 2.25, 0.05, 120.0, 0.0)
    bar.end_bar()
    captured = capsys.readouterr()
    assert captured.out == "between\n"
    assert "epoch 1/2" in captured.err and "8/8" in captured.err and "loss 2.2500 lr 0.05 120.0 img/s" in captured.err
    lines = Monitor(OutputConfig(dir=str(tmp_path / "b"), progress="lines", loggers=[], log_every=2))
    for step in (1, 2, 3):
        lines.progress(1, 2, step, 3, 2.0, 0.1, 50.0, 65.0)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "epoch 2/2 step 2/3 loss 2.0000 lr 0.1 50.0 img/s eta 1:05",
        "epoch 2/2 step 3/3 loss 2.0000 lr 0.1 50.0 img/s eta 1:05",
    ]
    assert captured.err == ""
