"""The flat parameter buffer: one array holding every layer's `W` and `b`.

Parameters, gradients and optimizer state each live in one flat buffer of
the same layout, so an optimizer updates the whole network in one call (one
kernel launch on a GPU).  Each layer's `W` (row-major `(n_out, n_in)`) and
`b` start at a multiple of `ALIGN` elements, so device kernels may use
16-byte vector loads at each segment's start; the padding between segments
stays zero in parameters and gradients, so updates leave it zero.
"""

from __future__ import annotations

from dataclasses import dataclass

#: segment alignment in elements (128 bytes in float32)
ALIGN = 32


def _round_up(n: int, m: int = ALIGN) -> int:
    return (n + m - 1) // m * m


@dataclass(frozen=True)
class ParamLayout:
    sizes: tuple[int, ...]

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def segments(self) -> list[tuple[int, int, int, int]]:
        """Per layer `(w_offset, n_out, n_in, b_offset)`."""
        out, off = [], 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            w_off = off
            b_off = _round_up(w_off + n_out * n_in)
            off = _round_up(b_off + n_out)
            out.append((w_off, n_out, n_in, b_off))
        return out

    @property
    def total(self) -> int:
        """Length of the flat buffer, padding included."""
        w_off, n_out, n_in, b_off = self.segments[-1]
        return _round_up(b_off + n_out)

    @property
    def n_params(self) -> int:
        """Number of trainable parameters (no padding)."""
        return sum(o * i + o for _, o, i, _ in self.segments)

    def views(self, flat) -> list[tuple[object, object]]:
        """Per layer `(W, b)` views into `flat` (numpy or cupy)."""
        return [(flat[w:w + o * i].reshape(o, i), flat[b:b + o]) for w, o, i, b in self.segments]
