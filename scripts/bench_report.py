"""Builds the generated summary of docs/BENCHMARKS.md from the saved outputs
of the benchmark commands (docs/bench-output/NAME.txt, written by
scripts/bench-report.sh), with charts.

    python scripts/bench_report.py docs/bench-output docs/BENCHMARKS.md docs/img

Every benchmark prints its figures beside their baselines, most as Markdown
table rows. This script finds, in each output, every figure that has a
goal, in one of these shapes:

    | what | ours | baseline | ratio | goal |          (5 columns; goal like ">= 0.8x", "ahead", "< 50 MB")
    | what | ... | 1.23 (goal ≥ 0.5) |                (a goal inside a cell: that cell's number)
    | what (goal ≤ 2) | 1.17 |                        (a goal in the label: the last number of the row)
    Rust / Python: 1.03x of medians ... (goal >= 0.90x)   (a plain line)

and writes, between the markers <!-- report:begin --> and <!-- report:end -->
of BENCHMARKS.md, one table of those figures (met or not) and a chart of the
margin of each over its goal; the full outputs stay in docs/bench-output/.
"""

import os
import re
import sys

NUM = r"[-+]?\d[\d,]*(?:\.\d+)?"
GOAL = re.compile(r"goal\s*(≥|>=|≤|<=|<|>)\s*(" + NUM + r")\s*([x×]|[A-Za-z]+)?", re.I)
# Lines worth quoting from outputs whose result is a tally, not a ratio.
KEY_LINE = (r"^(fleet\b.*|\d+ trials, .*|.*\bexecutions\b.*|sluice_\w+: \d+ kills.*|writer crash tally.*|"
            r"(outage: )?(catch-up|rows inserted).*|.*\bcases\b.*failures?.*|"
            r"\|\s*`sluice\.(search|nearest|hybrid_search)`.*|\| SQL: .*)$")
# How many figures with a goal each benchmark prints today: fewer in an
# output means a line changed shape (or the run failed), and the report says
# so instead of silently leaving the figure out.
EXPECTED = {"edge": 9, "cloud": 2, "cloud-retention": 1, "sync": 5, "embed": 1}
ORDER = ["edge", "cloud", "cloud-retention", "cloud-search", "sync", "embed", "fleet", "outage", "crash", "fuzz", "soak"]


def num(text):
    m = re.search(NUM, text or "")
    return float(m.group(0).replace(",", "")) if m else None


def op_of(sym):
    return {"≥": ">=", ">=": ">=", ">": ">", "≤": "<=", "<=": "<=", "<": "<"}[sym]


def parse_goal(text):
    """A goal cell: '>= 0.8x', '≥ 2.5×', 'ahead', '< 50 MB', '<= 12 B'."""
    t = text.strip()
    if t.lower().startswith("ahead"):
        return (">", 1.0)
    m = re.match(r"(≥|>=|≤|<=|<|>)\s*(" + NUM + ")", t)
    if m:
        return (op_of(m.group(1)), float(m.group(2).replace(",", "")))
    return None


def met(value, goal):
    op, g = goal
    return {">=": value >= g, ">": value > g, "<=": value <= g, "<": value < g}[op]


def figures(name, text):
    """(label, value, op, goal, unit-hint) of every figure with a goal."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|") and not re.match(r"^\|[\s\-:|]+\|$", s):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if len(cells) == 5 and parse_goal(cells[4]):
                goal = parse_goal(cells[4])
                # A ratio goal ("x", "×", "ahead") reads the ratio column;
                # a limit ("< 50 MB") reads our own figure.
                ratio_goal = cells[4].lower().startswith("ahead") or re.search(
                    r"^(?:≥|>=|>|≤|<=|<)?\s*" + NUM + r"\s*[x×]", cells[4].strip())
                value = num(cells[3]) if ratio_goal else num(cells[1])
                if value is not None:
                    out.append((cells[0], value, goal[0], goal[1], cells[1] if not ratio_goal else cells[3]))
                continue
            for i, c in enumerate(cells):
                m = GOAL.search(c)
                if not m:
                    continue
                if i == 0:
                    value = next((num(x) for x in reversed(cells[1:]) if num(x) is not None), None)
                else:
                    value = num(c[: m.start()])
                if value is not None:
                    out.append((cells[0], value, op_of(m.group(1)), float(m.group(2).replace(",", "")), cells[i]))
                break
        else:
            # A plain line "label: value ... (goal >= 0.90x)".
            m = GOAL.search(s)
            lv = re.match(r"^([^:|#]{3,80}):\s*(" + NUM + ")", s)
            if m and lv:
                out.append((lv.group(1).strip(), float(lv.group(2).replace(",", "")), op_of(m.group(1)),
                            float(m.group(2).replace(",", "")), s))
    return out


def header(text):
    meta = {}
    for line in text.splitlines():
        if line.startswith("# command:"):
            meta["command"] = line.split(":", 1)[1].strip()
        elif line.startswith("# date:"):
            meta["when"] = line[len("# date:"):].strip()
        elif line.startswith("# exit status:"):
            meta["end"] = line[len("# exit status:"):].strip()
    return meta


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, margins, colors = [], [], []
    for bench, label, value, op, goal, ok in rows:
        if value <= 0 or goal <= 0:
            continue
        margin = value / goal if op in (">=", ">") else goal / value
        short = label if len(label) <= 60 else label[:57] + "..."
        labels.append(f"{bench}: {short}")
        margins.append(margin)
        colors.append("#2e7d32" if ok else "#c62828")
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.34 * len(labels) + 1.6))
    y = range(len(labels))
    ax.barh(list(y), margins, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("margin over the goal (figure ÷ goal, or goal ÷ figure for limits); right of the line = met")
    ax.set_title("sluice benchmarks: every figure with a goal (green met, red missed)")
    for i, m in enumerate(margins):
        ax.text(m, i, f" {m:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    out_dir, md_path, img_dir = sys.argv[1:4]
    names = [n[:-4] for n in os.listdir(out_dir) if n.endswith(".txt")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    rows, runs = [], []
    for name in names:
        text = open(os.path.join(out_dir, name + ".txt"), encoding="utf-8", errors="replace").read()
        meta = header(text)
        runs.append((name, meta))
        for label, value, op, goal, shown in figures(name, text):
            rows.append((name, label, value, op, goal, met(value, (op, goal))))

    os.makedirs(img_dir, exist_ok=True)
    img = os.path.join(img_dir, "bench-goals.png")
    have_chart = chart(rows, img)

    sym = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}
    lines = [
        "<!-- report:begin -->",
        "## Summary (generated)",
        "",
        "Written by `bash scripts/bench-report.sh` (which runs every benchmark",
        "command below and keeps its whole output in `docs/bench-output/`);",
        "`SAVED=1 bash scripts/bench-report.sh` rebuilds this part from the saved",
        "outputs, `ONLY=edge,sync` reruns some. The sections after it explain each",
        "benchmark and keep earlier runs.",
        "",
        "| benchmark | command | run (UTC, commit, cores, load) | end |",
        "| --- | --- | --- | --- |",
    ]
    for name, meta in runs:
        lines.append(f"| {name} | `{meta.get('command', '?')}` | {meta.get('when', '?')} | "
                     f"{meta.get('end', 'did not finish')} |")
    lines += ["", f"{sum(r[5] for r in rows)} of {len(rows)} figures with a goal meet it.", ""]
    found = {name: sum(1 for r in rows if r[0] == name) for name, _ in runs}
    short = [f"{n}: {found.get(n, 0)} of {want} expected figures found"
             for n, want in EXPECTED.items() if found.get(n, 0) < want]
    missing = [n for n in EXPECTED if n not in found]
    if short or missing:
        lines += ["**Incomplete:** " + "; ".join(short + [f"{n}: no output" for n in missing if n not in
                                                          [s.split(':')[0] for s in short]]) +
                  " (see its output in `docs/bench-output/`).", ""]
        print("bench-report: INCOMPLETE: " + "; ".join(short), file=sys.stderr)
    if have_chart:
        lines += [f"![every figure against its goal](img/{os.path.basename(img)})", ""]
    lines += ["| benchmark | figure | value | goal | met |", "| --- | --- | ---: | --- | --- |"]
    for name, label, value, op, goal, ok in rows:
        label = label.replace("|", "/")
        lines.append(f"| {name} | {label} | {value:g} | {sym[op]} {goal:g} | {'yes' if ok else '**no**'} |")
    notes = []
    for name, _ in runs:
        text = open(os.path.join(out_dir, name + ".txt"), encoding="utf-8", errors="replace").read()
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("...") or not re.match(KEY_LINE, line):
                continue
            line = line if len(line) <= 300 else line[:297] + "..."
            note = f"- {name}: {line}"
            if note not in notes:
                notes.append(note)
    if notes:
        lines += ["", "Results without a numeric goal (exactly once, no loss, no panic):", ""] + notes
    lines += ["<!-- report:end -->"]
    block = "\n".join(lines) + "\n"

    md = open(md_path, encoding="utf-8").read()
    if "<!-- report:begin -->" in md:
        md = re.sub(r"<!-- report:begin -->.*?<!-- report:end -->\n?", lambda _: block, md, flags=re.S)
    else:
        # After the introduction, before the first section.
        at = md.find("\n## ")
        md = md[: at + 1] + block + "\n" + md[at + 1 :] if at >= 0 else md + "\n" + block
    open(md_path, "w", encoding="utf-8").write(md)
    print(f"bench-report: {len(rows)} figures with a goal from {len(runs)} outputs -> {md_path}"
          + (f", {img}" if have_chart else ""))


if __name__ == "__main__":
    main()
