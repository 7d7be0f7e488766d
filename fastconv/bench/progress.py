"""Progress of a long run, one line per step on stderr: rewritten in place on a terminal,
ended with a newline otherwise, so a log or a pipe gets one line per step instead of one
run-on line."""
import sys


class Progress:
    """`step(text)` before each step starts (what is running now), `close()` at the end."""

    def __init__(self, enabled=True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.in_place = enabled and self.stream.isatty()
        self.width = 0  # of the line shown, to blank what a shorter one leaves behind

    def step(self, text):
        if not self.enabled:
            return
        if self.in_place:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self.in_place and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0
