"""The web UI's text contrast, read from the stylesheet it ships (docs/UI.md promises WCAG AA,
at least 4.5:1): every rule that sets a text colour is checked against the background it sits on
(its own, else each page background the element can appear on), with the CSS variables resolved
and a translucent background blended over its parent's."""

from __future__ import annotations

import re
from pathlib import Path

import proconsul.ui

CSS = Path(proconsul.ui.__file__).parent / "assets" / "app.css"
AA = 4.5
# Where a rule with a text colour but no background of its own can appear.
PAGE_BACKGROUNDS = ("var(--bg)", "var(--panel)")
# Rules painted on another rule's background (the top bar's links sit on the top bar).
PARENT = {".top a": ".top", ".top a[aria-current=\"page\"]": ".top"}


def _rules(css: str) -> dict[str, dict[str, str]]:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    css = re.sub(r"@media[^{]*\{(.*?\})\s*\}", r"\1", css, flags=re.S)  # its rules hold no colours
    out: dict[str, dict[str, str]] = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        decls = {k.strip(): v.strip() for k, v in (d.split(":", 1) for d in body.split(";") if ":" in d)}
        for selector in selectors.split(","):
            out.setdefault(selector.strip(), {}).update(decls)
    return out


def _rgba(value: str, variables: dict[str, str]) -> tuple[float, float, float, float]:
    value = value.split()[0] if value.startswith(("#", "var(")) else value
    while value.startswith("var("):
        value = variables[value[4:-1]]
    if value.startswith("#"):
        h = value[1:]
        if len(h) == 3:
            h = "".join(c * 2 for c in h)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 1.0
    m = re.fullmatch(r"rgba?\(([^)]*)\)", value)
    assert m, f"unknown colour {value!r}"
    parts = [float(p) for p in m.group(1).split(",")]
    return parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else 1.0


def _over(top: tuple[float, float, float, float], under: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    a = top[3]
    return tuple(top[i] * a + under[i] * (1 - a) for i in range(3)) + (1.0,)  # type: ignore[return-value]


def _luminance(c: tuple[float, float, float, float]) -> float:
    def channel(v: float) -> float:
        v /= 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(c[0]) + 0.7152 * channel(c[1]) + 0.0722 * channel(c[2])


def contrast(fg: tuple[float, float, float, float], bg: tuple[float, float, float, float]) -> float:
    hi, lo = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_contrast_helper_matches_wcag_reference_values() -> None:
    assert round(contrast((0, 0, 0, 1), (255, 255, 255, 1)), 1) == 21.0
    assert round(contrast((118, 118, 118, 1), (255, 255, 255, 1)), 2) == 4.54  # #767676, the AA edge


def test_every_text_colour_meets_aa_on_its_background() -> None:
    rules = _rules(CSS.read_text())
    variables = {k: v for k, v in rules[":root"].items() if k.startswith("--")}
    checked = []
    for selector, decls in rules.items():
        if "color" not in decls:
            continue
        fg = _rgba(decls["color"], variables)
        if "background" in decls:
            bg = _rgba(decls["background"], variables)
            if bg[3] < 1:
                bg = _over(bg, _rgba(rules[PARENT[selector]]["background"], variables))
            backgrounds = [bg]
        elif selector in PARENT:
            backgrounds = [_rgba(rules[PARENT[selector]]["background"], variables)]
        else:
            backgrounds = [_rgba(b, variables) for b in PAGE_BACKGROUNDS]
        for bg in backgrounds:
            ratio = contrast(fg, bg)
            checked.append(selector)
            assert ratio >= AA, f"{selector}: {decls['color']} on {bg} is {ratio:.2f}:1, under {AA}:1"
    # The rules that carry text colours were all seen (a parse that found none would pass).
    assert {"body", "a", ".muted", ".badge.passing", ".badge.critical", "button.primary", ".top a"} <= set(checked)
