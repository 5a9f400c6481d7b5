"""A small PromQL reader for the monitoring lint tests (tests/test_monitoring.py).

pint and Grafana's dashboard-linter are not served by the package registries here, so
the rules of theirs that matter on a shared cluster are tests of ours, and these helpers
find what those rules look at: aggregations with their grouping, joins with their
matching labels, and metric selectors with their matchers. The expressions are ours and
promtool has already parsed them, so a scanner over the text is enough; it understands
both aggregation forms (``sum by (l) (x)`` and ``sum(x) by (l)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

AGGREGATIONS = ("sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
                "quantile", "count_values", "limitk", "limit_ratio")
#: Functions whose result has no labels, or only the labels written into their argument.
LABEL_DROPPING = ("absent", "absent_over_time", "scalar", "vector")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "atan2", "inf", "nan", "start", "end"}
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


@dataclass(frozen=True)
class Aggregation:
    op: str
    modifier: str  # "by", "without" or "" (none: every label is summed away)
    labels: tuple[str, ...]


def _matching_paren(text: str, start: int) -> int:
    """Index of the ``)`` closing the ``(`` at ``start`` (strings skipped)."""
    depth, i, quote = 0, start, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced parentheses in {text!r}")


def _label_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def aggregations(expr: str) -> list[Aggregation]:
    """Every aggregation in ``expr`` with the labels it groups by (or drops)."""
    text = _strip_strings(expr)
    out = []
    for m in re.finditer(rf"\b({'|'.join(AGGREGATIONS)})\b\s*", text):
        if text[m.start() - 1:m.start()] in ("_", ":") or (m.start() and text[m.start() - 1].isalnum()):
            continue
        rest = m.end()
        mod = re.match(r"(by|without)\s*\(([^)]*)\)\s*", text[rest:])
        if mod:
            out.append(Aggregation(m.group(1), mod.group(1), _label_list(mod.group(2))))
            continue
        if text[rest:rest + 1] != "(":
            continue  # a metric or label that happens to share the name
        close = _matching_paren(text, rest)
        after = re.match(r"\s*(by|without)\s*\(([^)]*)\)", text[close + 1:])
        if after:
            out.append(Aggregation(m.group(1), after.group(1), _label_list(after.group(2))))
        else:
            out.append(Aggregation(m.group(1), "", ()))
    return out


def joins(expr: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every ``on(...)`` / ``ignoring(...)`` vector matching, with its labels."""
    text = _strip_strings(expr)
    return [(m.group(1), _label_list(m.group(2)))
            for m in re.finditer(r"\b(on|ignoring)\s*\(([^)]*)\)", text)]


def label_dropping_calls(expr: str) -> list[str]:
    text = _strip_strings(expr)
    return [m.group(1) for m in re.finditer(rf"\b({'|'.join(LABEL_DROPPING)})\s*\(", text)]


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Every series selector: (metric name, {label: (operator, value)}).

    Function names, keywords, grouping lists, durations and Grafana's ``$__`` variables are
    not selectors; a bare metric name is one with no matchers.
    """
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    out = []
    for m in re.finditer(r'(?<![\w$:."])([a-zA-Z_:][\w:]*)?\s*(\{[^}]*\})?', text):
        name, braces = m.group(1), m.group(2)
        if not name and not braces:
            continue
        if name and not braces and (name in KEYWORDS or text[m.end():].lstrip().startswith("(")):
            continue  # a keyword, or a function / aggregation call
        if name and braces is None and re.fullmatch(r"[0-9].*", name):
            continue
        matchers = {k: (op, v) for k, op, v in MATCHER.findall(braces or "")}
        out.append((name or "", matchers))
    return out
