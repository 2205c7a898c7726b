"""Stream seconds -> wall-clock time: one fixed map per stream, so every stamp agrees with the
stream seconds it came from.

Inside the pipeline every time is seconds on the stream clock (frames.py). The JSON output
also carries each instant as Unix time (seconds since 1970-01-01 UTC, the ``*_unix_s`` fields),
``unix_s = origin_unix_s + stream_s``, where ``origin_unix_s`` is the Unix time of stream second 0:

* a device (MicrophoneSource, CameraSource): the Unix time of its ``clock_origin_s``, taken
  once when it opens, so a stamp is when the sound was captured;
* anything else (a file replay, ``push_audio``): the moment the first audio block arrives
  minus that block's end time, i.e. "the audio up to here was captured just now". A paced
  replay then stamps like a device. A replay faster than real time stamps when the audio
  would have been captured had the file been played live from the start of the replay, so
  its stamps run ahead of the wall clock; a later stream never starts before an earlier
  one's last stamp, so the stamps of one pipeline never go back.

The map is linear with slope 1, so ``end_unix_s - start_unix_s == end_s - start_s`` and the
stamps are as monotonic as the stream seconds.
"""

from __future__ import annotations

import time


def unix_time_of(perf_counter_s: float) -> float:
    """The Unix time (s) of a ``time.perf_counter()`` reading, by the wall clock now."""
    return time.time() - (time.perf_counter() - perf_counter_s)


def to_unix_s(origin_unix_s: float | None, stream_s: float) -> float | None:
    """``origin_unix_s + stream_s`` rounded to the microsecond; None without a stream clock."""
    return None if origin_unix_s is None else round(origin_unix_s + stream_s, 6)


class StreamClock:
    """The stream -> Unix map of one stream: ``origin_unix_s``, the Unix time of stream second 0.

    ``set_origin(u)`` fixes it (a device's clock origin); otherwise ``anchor(start_s, end_s)``,
    called with the first audio block, estimates it from the wall clock. ``origin_for(t)``
    hands it to a frame stamped at stream time ``t``; ``new_stream()`` forgets it.
    """

    def __init__(self) -> None:
        self.origin_unix_s: float | None = None
        self._last_unix_s = float("-inf")   # the latest instant stamped, over every stream

    def set_origin(self, origin_unix_s: float | None) -> None:
        """Stream second 0 is ``origin_unix_s`` (None: estimate it at the first block)."""
        self.origin_unix_s = origin_unix_s

    def anchor(self, start_s: float, end_s: float) -> None:
        """An audio block ``[start_s, end_s]`` (stream s) arrived: fixes the origin if unknown."""
        if self.origin_unix_s is None:
            self.origin_unix_s = max(time.time() - end_s, self._last_unix_s - start_s)

    def origin_for(self, stream_s: float) -> float:
        """The origin, for a frame stamped at ``stream_s`` (remembered: later streams start after it)."""
        self.anchor(stream_s, stream_s)
        self._last_unix_s = max(self._last_unix_s, self.origin_unix_s + stream_s)
        return self.origin_unix_s

    def new_stream(self) -> None:
        """A new stream (its clock may start at 0 again): the next block fixes the origin again."""
        self.origin_unix_s = None
