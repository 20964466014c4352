"""Generated poster images for the sandbox's image route (TMDB's image CDN is not reachable
offline): a deterministic gradient per poster path with the title set on it, as SVG."""

from __future__ import annotations

import hashlib
import textwrap
from xml.sax.saxutils import escape


def poster_svg(poster_path: str, title: str) -> str:
    """A 2:3 SVG poster whose colours derive from ``poster_path``."""
    digest = hashlib.sha256(poster_path.encode()).digest()
    hue_a, hue_b = digest[0] * 360 // 256, digest[1] * 360 // 256
    lines = textwrap.wrap(title, width=14)[:5] or [""]
    start = 330 - 24 * (len(lines) - 1)
    text = "".join(
        f'<tspan x="171" y="{start + 48 * i}">{escape(line)}</tspan>'
        for i, line in enumerate(lines)
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="342" height="513" viewBox="0 0 342 513">'
        '<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">'
        f'<stop offset="0" stop-color="hsl({hue_a},55%,38%)"/>'
        f'<stop offset="1" stop-color="hsl({hue_b},60%,18%)"/>'
        "</linearGradient></defs>"
        '<rect width="342" height="513" fill="url(#g)"/>'
        '<rect x="16" y="16" width="310" height="481" fill="none" stroke="rgba(255,255,255,.35)"/>'
        '<text font-family="Georgia, serif" font-size="34" fill="#fff" text-anchor="middle">'
        f"{text}</text>"
        '<text x="171" y="480" font-family="sans-serif" font-size="14" fill="rgba(255,255,255,.7)"'
        ' text-anchor="middle">TMDB SANDBOX</text></svg>'
    )
