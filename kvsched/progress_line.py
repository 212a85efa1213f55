"""Show a solve's progress on stderr: one status line rewritten in place on a terminal, plain lines elsewhere.

`ProgressLine` is the callback `kvsched plan` hands to `solve(progress=...)`. On a terminal it rewrites one line
with a carriage return (cut to the terminal's width, so it never wraps) and `close()` blanks it, so the plan
printed next starts on a clean line. Elsewhere (forced with `--progress`: a pipe, a log, the tests) each update
is a line of its own starting "kvsched plan: ", the last one with phase "done". Updates before `delay_s` seconds
of the solve are not shown: a solve that ends sooner prints nothing. Called by: `kvsched.cli` (`plan`).
"""

from __future__ import annotations

import math
from typing import TextIO

from kvsched.packer import Progress
from kvsched.plan_output import format_gap, format_kvpr

# A solve shorter than this prints no progress on a terminal: a line that flashes and vanishes is noise.
TERMINAL_DELAY_S = 1.0


def progress_text(p: Progress) -> str:
    """`12.3 s local search: best max KVPR 0.225845, lower bound 0.225022, gap 0.37%` (76 characters: fits an
    80-column terminal). A figure not known yet (no complete plan, no bound) reads "-"."""
    no_plan = math.isinf(p.best_max_kvpr) and p.phase != "done"
    best = "-" if no_plan else format_kvpr(p.best_max_kvpr)
    lower = format_kvpr(p.lower_bound) if p.lower_bound > 0 else "-"
    gap = format_gap(p.best_max_kvpr / p.lower_bound - 1.0) if not no_plan and p.lower_bound > 0 else "-"
    return f"{p.elapsed_s:.1f} s {p.phase}: best max KVPR {best}, lower bound {lower}, gap {gap}"


class ProgressLine:
    """Writes `Progress` updates to `stream`; in place (carriage return) when `in_place`, else a line each.

    `width` (characters) bounds an in-place line: one character less is written so the cursor never wraps.
    """

    def __init__(self, stream: TextIO, *, in_place: bool, delay_s: float = 0.0, width: int = 80) -> None:
        self._stream = stream
        self._in_place = in_place
        self._delay_s = delay_s
        self._width = max(width - 1, 10)
        self._shown = 0  # characters of the in-place line now on screen

    def __call__(self, progress: Progress) -> None:
        if progress.elapsed_s < self._delay_s:
            return
        text = progress_text(progress)
        if self._in_place:
            if progress.phase == "done":
                return  # the plan follows at once; close() clears the line
            text = text[: self._width]
            self._stream.write("\r" + text.ljust(self._shown))
            self._shown = len(text)
        else:
            self._stream.write(f"kvsched plan: {text}\n")
        self._stream.flush()

    def close(self) -> None:
        """Blank the in-place line and put the cursor back at its start (nothing to do for plain lines)."""
        if self._in_place and self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._stream.flush()
            self._shown = 0
