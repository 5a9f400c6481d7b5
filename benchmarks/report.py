"""BENCHMARKS.md: machine facts, a summary table, then one section per benchmark."""

from __future__ import annotations

from .common import Outcome


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render(outcomes: list[Outcome], facts: list[tuple[str, str]], command: str, quick: bool,
           total_seconds: float) -> str:
    lines = [
        "# kubescribe benchmarks",
        "",
        "Written by `python -m benchmarks.run` (`make bench`). Every figure below comes from the run described "
        "here, and every baseline was measured in that same run on the same machine, a moment apart from the "
        "figure it is compared with. Re-run one benchmark with `python -m benchmarks.run --only NAME`.",
        "",
    ]
    if quick:
        lines += ["> **Quick run** (`--quick`): sizes reduced for development; these figures are not comparable "
                  "with the targets.", ""]
    lines += [f"Command: `{command}` (whole run: {total_seconds / 60:.1f} min)", "", "## Machine", ""]
    lines += _table(["", ""], [[k, v] for k, v in facts])
    lines += ["", "## Summary", ""]
    lines += _table(["benchmark", "kubescribe", "baseline (same run)", "ratio", "target", "result"],
                    [[f"[{o.name}](#{o.name.replace('_', '')})", o.headline, o.baseline, o.ratio, o.target,
                      f"**{o.status}**"] for o in outcomes])
    lines += [""]
    for o in outcomes:
        lines += [f"<a id=\"{o.name.replace('_', '')}\"></a>", f"## {o.name}: {o.title}", ""]
        if o.measured:
            lines += [f"**Measured.** {o.measured}", ""]
        lines += _table(["", ""], [["kubescribe", o.headline], ["baseline (same run)", o.baseline],
                                   ["ratio", o.ratio], ["target", o.target], ["result", f"**{o.status}**"],
                                   ["benchmark time", f"{o.seconds:.0f} s"],
                                   ["CPU used meanwhile by processes outside this run",
                                    "-" if o.foreign_load is None else f"{o.foreign_load * 100:.0f} % of the machine"]])
        lines += [""]
        if o.foreign_load is not None and o.foreign_load > 0.05:
            lines += [f"> Other processes on this machine used {o.foreign_load * 100:.0f} % of its CPUs while this "
                      "benchmark ran: its timings are slower and noisier than on an idle machine.", ""]
        for caption, header, rows in o.tables:
            lines += [f"*{caption}*", ""] + _table(header, rows) + [""]
        for note in o.notes:
            lines += [note, ""]
        alone = "" if sorted(o.command.split()) == sorted(command.split()) else f"; alone: `{o.command}`"
        lines += [f"Produced by `{command}`{alone}.", ""]
    return "\n".join(lines).rstrip() + "\n"
