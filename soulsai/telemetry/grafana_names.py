"""The series a Grafana target names: a name, a multi-value variable ("{a,b}" or the
plugins' regex formatting "(a|b)" with escaped dots) or a shell-style glob. Never compiled as a
regular expression: globs are matched in linear time, so no request can hold the interpreter."""

from __future__ import annotations

from soulsai.telemetry.grafana_requests import MAX_PATTERN, QueryError


def glob_match(pattern: str, name: str) -> bool:
    """Whether `pattern` matches all of `name`: `*` any run of characters, `?` one character,
    anything else itself. A scan that only ever backtracks to the last `*`, so its work is at
    most len(pattern) * len(name) steps whatever the pattern (unlike a backtracking regex)."""
    p = n = 0
    star, mark = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] in ("?", name[n]):
            p, n = p + 1, n + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, n, p + 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            n = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _unescape(text: str) -> str:
    """A value in the plugins' regex formatting ("info\\.hp") back to the name it escapes."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def expand_target(name: str, known: list[str]) -> list[str]:
    """The series a target names: a series itself; a multi-value variable, which arrives as
    "{a,b}" or, in the plugins' regex formatting, as "(a|b)" with escaped dots; or a glob
    matching whole names ("info.*_avg"; one that matches nothing names nothing). A plain name
    comes back as it is, known or not. Never a regex: "(a|b)" is split on "|" and each part
    taken literally (after removing escapes)."""
    name = name.strip()
    if len(name) > MAX_PATTERN:
        raise QueryError(f"a target is {len(name)} characters; at most {MAX_PATTERN}")
    if not name or name in known:
        return [name] if name else []
    if name.startswith("{") and name.endswith("}"):
        parts = name[1:-1].split(",")
    elif name.startswith("(") and name.endswith(")"):
        parts = [_unescape(p) for p in name[1:-1].split("|")]
    else:
        parts = [_unescape(name)]
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if part in known or not any(c in part for c in "*?"):
            out.append(part)
        else:
            out += [k for k in known if glob_match(part, k)]
    return out
