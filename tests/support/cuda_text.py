"""Reading CUDA C++ source as text: the helpers both test doubles share.

`fake_cupy` parses kernel signatures out of our modules to check launches, and
`cuda_emu` rewrites the same sources for its CPU build; both read comments and
brackets the same way through this module.
"""

from __future__ import annotations

import re


def strip_comments(src: str) -> str:
    """`src` without `/* ... */` (each replaced by a space) and `// ...` comments."""
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def match_close(src: str, i: int, open_ch: str = "(", close_ch: str = ")") -> int:
    """The index just past the bracket closing the one at `src[i]` (which must be `open_ch`)."""
    if src[i] != open_ch:
        raise ValueError(f"expected {open_ch!r} at offset {i} of the CUDA source, found {src[i]!r}")
    depth = 0
    for j in range(i, len(src)):
        if src[j] == open_ch:
            depth += 1
        elif src[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError(f"unbalanced {open_ch}{close_ch} in CUDA source")


def split_top(text: str) -> list[str]:
    """`text` split at the commas outside any (), <> pair, each part stripped; empty parts dropped
    at the end only (`"a, b, "` gives `["a", "b"]`)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"(": 1, "<": 1, ")": -1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts
