"""The one progress display: tqdm's bar on a terminal, the same numbers as plain lines in a log.

Used for the image scan (``data.scan.check_files``) and the training bar (``Monitor``). tqdm
computes the rate and the ETA; on a terminal it redraws its bar in place, elsewhere a log file
would fill with carriage returns, so ``Progress`` then prints tqdm's text without the bar as
one line every ``every_s`` seconds and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

# tqdm's own fields, without the bar: "train: 5/16  31% [00:02<00:05,  2.00img/s]"
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {percentage:3.0f}% [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (where a bar can be redrawn in place)."""
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class Progress:
    """Progress of ``total`` units of work (images checked, steps trained) on ``stream`` (stderr).

    ``bar=True`` shows tqdm's bar, rate and ETA, redrawn in place; ``bar=False`` prints the same
    numbers as a plain line every ``every_s`` seconds and when the work is done; ``bar=None``
    picks the bar when ``stream`` is a terminal. ``initial`` units count as done before the
    start (a resumed epoch) and do not enter the rate. ``enabled=False`` shows nothing.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        bar: bool | None = None,
        initial: int = 0,
        stream: TextIO | None = None,
        every_s: float = 10.0,
        enabled: bool = True,
    ):
        self.stream = stream or sys.stderr
        self.bar = is_terminal(self.stream) if bar is None else bar
        self.enabled = enabled
        self.total, self.n, self.initial = max(int(total), 0), int(initial), int(initial)
        self.desc, self.unit, self.every_s, self.postfix = desc, unit, every_s, ""
        self.start = self.last = time.monotonic()
        self._tqdm = tqdm(
            total=self.total,
            initial=self.initial,
            desc=desc,
            unit=unit,
            file=self.stream,
            dynamic_ncols=True,
            disable=not (enabled and self.bar),
        )

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """``n`` more units done; ``postfix`` (e.g. "loss 2.31 lr 0.1") is shown after the rate."""
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if self.bar:
            if postfix is not None:
                self._tqdm.set_postfix_str(postfix, refresh=False)
            self._tqdm.update(n)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.every_s or self.n >= self.total):
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """The progress as one line of text, tqdm's fields without the bar."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        return tqdm.format_meter(
            self.n,
            self.total,
            elapsed,
            prefix=self.desc,
            unit=self.unit,
            bar_format=LINE_FORMAT,
            postfix=self.postfix or None,
            initial=self.initial,
        )

    def write(self, message: str, file: TextIO | None = None) -> None:
        """Print ``message`` (to stdout by default) without breaking a bar that is on screen."""
        if self.bar and self.enabled:
            tqdm.write(message, file=file or sys.stdout)
        else:
            print(message, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        """End the display (a bar stays on screen as its final state)."""
        self._tqdm.close()
