"""Loading prompt templates from `prompts/` and formatting corpus text into them safely.

Corpus text is data: angle brackets in it are replaced by look-alikes, so no document can fake the
`<<marked>>` tokens or close the `<excerpt>` delimiters that separate data from instructions.
Templates are filled in one pass, so a placeholder-looking string inside data is never expanded.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path

from autointerp.records import Example

PROMPTS_DIR = Path(os.environ.get("AUTOINTERP_PROMPTS", Path(__file__).resolve().parents[1] / "prompts"))
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@functools.cache
def load_prompt(name: str) -> str:
    """The template `prompts/<name>` (e.g. "detection/user.md"), trailing newline stripped."""
    path = PROMPTS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"prompt template not found: {path}")
    return path.read_text(encoding="utf-8").rstrip("\n")


def render(template: str, **values: object) -> str:
    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{ {key} }}}} has no value")
        return str(values[key])

    return _PLACEHOLDER.sub(fill, template)


def prompt_files() -> list[Path]:
    return sorted(p for p in PROMPTS_DIR.rglob("*") if p.is_file())


def prompts_hash() -> str:
    """A short digest of every prompt file: written into results so scores can be traced to prompts."""
    import hashlib

    h = hashlib.sha256()
    for p in prompt_files():
        h.update(p.relative_to(PROMPTS_DIR).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def clean_token(s: str) -> str:
    """Neutralise the characters that build our delimiters; show newlines as a visible mark."""
    return s.replace("<", "‹").replace(">", "›").replace("\r", "").replace("\n", "↵")


_BLANKS = {" ": "␣", "\t": "⇥"}


def readable_token(s: str) -> str:
    """A token as a reader can see it in a label: `clean_token`'s delimiters and newlines (↵),
    surrounding spaces dropped, other invisible characters as escapes (\\u200b); a token of only
    spaces or tabs shows them as ␣ and ⇥."""
    text = "".join(
        ch if ch.isprintable() or ch in _BLANKS else ch.encode("unicode_escape").decode("ascii")
        for ch in clean_token(s)
    )
    return text.strip() or "".join(_BLANKS.get(ch, ch) for ch in text)


def format_marked(str_tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """Text with runs of marked tokens wrapped in << >> (adjacent marked tokens share one pair)."""
    out: list[str] = []
    inside = False
    for tok, m in zip(str_tokens, marked, strict=True):
        tok = clean_token(tok)
        if m and not inside:
            # keep a token's leading space outside the marker: "the <<cat>>", not "the<< cat>>"
            # (unless the token is only spaces: then the spaces are what is marked)
            stripped = tok.lstrip(" ") or tok
            out.append(tok[: len(tok) - len(stripped)] + "<<" + stripped)
            inside = True
        elif not m and inside:
            out.append(">>" + tok)
            inside = False
        else:
            out.append(tok)
    if inside:
        out.append(">>")
    return "".join(out)


def quoted(text: str) -> str:
    """`text` in the first quote marks it does not contain itself, so a quote token stays readable."""
    for left, right in (('"', '"'), ("'", "'")):
        if left not in text:
            return left + text + right
    return "“" + text + "”"


def marks_above(example: Example, fraction: float) -> list[bool]:
    """Tokens whose activation exceeds `fraction` of the example's maximum (none for a silent example)."""
    top = example.max_activation
    return [top > 0 and a > fraction * top for a in example.activations]


def format_plain(example: Example) -> str:
    return format_marked(example.str_tokens, [False] * len(example.str_tokens))
