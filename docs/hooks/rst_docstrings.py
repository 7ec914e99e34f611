"""griffe extension: e3elastic's docstrings, written for reading in the source, as Markdown.

The docstrings use a few reStructuredText habits that Markdown would render wrongly:

* doctest examples (``>>> ...`` and their output) become ``pycon`` code blocks instead of
  nested block quotes;
* a literal block announced by ``::`` (the indented lines that follow) becomes a code block;
* roles such as ``:func:`~e3elastic.tensors.voigt_to_cartesian``` become code spans (``~``
  keeps the last name, as in Sphinx), and double-backquoted literals single-backquoted ones.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj|py:\w+):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _inline(line: str) -> str:
    line = _ROLE.sub(_role, line)
    return re.sub(r"``([^`]+)``", r"`\1`", line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    """The docstring ``text`` with doctests, ``::`` blocks and roles turned into Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            pad = " " * _indent(line)
            out.append(f"{pad}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{pad}```")
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            # "text::" -> "text:"; a bare "::" line disappears
            head = line.rstrip()[:-1]
            if head.strip() != ":":
                out.append(_inline(head))
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block_end = j
            while block_end < len(lines) and (
                not lines[block_end].strip() or _indent(lines[block_end]) > base
            ):
                block_end += 1
            block = lines[j:block_end]
            while block and not block[-1].strip():
                block.pop()
            if block:
                cut = min(_indent(b) for b in block if b.strip())
                pad = " " * base
                out += ["", f"{pad}```text", *(pad + b[cut:] for b in block), f"{pad}```", ""]
                i = block_end
                continue
            i += 1
            continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    """Rewrites every docstring with :func:`to_markdown` as its object is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
