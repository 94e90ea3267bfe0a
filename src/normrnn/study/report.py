"""The report: ``report.md``, a self-contained ``report.html`` (figures embedded), PNG figures and
``results.json`` with every number.

Both documents are rendered from one list of blocks (heading, paragraph, table, image), so they say the same.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from .core import StudyContext
from .runner import ClaimResult

COLUMNS = ("BN", "LN", "RMS")
VERDICT_COLOURS = {"supported": "#1a7f37", "contradicted here": "#cf222e", "not shown here": "#9a6700",
                   "not testable with this design": "#8250df", "by construction": "#0969da",
                   "inconclusive": "#57606a"}
STATS_NOTE = ("How to read the numbers: the arms of a claim share seeds, initialisation and data order, so every "
              "effect is a **paired** per-seed difference, given as mean (95% CI from a t interval with n − 1 degrees "
              "of freedom, SE = its standard error, n = pairs); tables give **mean ± SD** over seeds. A part *holds* "
              "when the 95% CI's lower bound clears the claim's practical margin; *not shown here* means the CI lies "
              "within ± the margin (an equivalence bound) or this scale cannot show the effect; *contradicted here* "
              "means a significant effect the other way; union rules (\"some rival wins\") use Holm's correction. "
              "Every verdict names its scale (units × updates × seeds, data): it holds at that scale, not in general.")
INDICATIVE = {"smoke": "Verdicts of the **smoke** profile mean nothing: it exercises the pipeline in seconds.",
              "quick": "Verdicts of the **quick** profile are **indicative** only: small models early in training, 3 "
                       "seeds; most claims' scale checks fail at this size, which caps their verdicts at *not shown "
                       "here*. Run `--profile standard` for verdicts meant to decide.",
              "standard": "The **standard** profile is the one meant to decide: about 128 units, thousands of updates, "
                          "5 seeds, a learning rate per compared arm.",
              "full": "The **full** profile uses paper-sized set-ups where the claims say so."}


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": cpu, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "git_commit": commit}


def anchor(claim_id: str) -> str:
    return f"claim-{claim_id.lower()}"


def build_blocks(results: list[ClaimResult], ctx: StudyContext, env: dict, figures: dict[str, Path]) -> list[tuple]:
    """The report as blocks: ("h", level, text, anchor) | ("p", text) | ("table", headers, rows) | ("img", path,
    alt). Cell and paragraph text may hold [label](#anchor) links."""
    indicative = ctx.profile in ("smoke", "quick")
    blocks: list[tuple] = [("h", 1, "normrnn study: batch norm vs layer norm vs RMSNorm in recurrent networks", None)]
    blocks.append(("p", f"Profile **{ctx.profile}**, {ctx.seeds} seed(s), device {ctx.device}. Measured "
                        f"{env['date']} with torch {env['torch']} on {env['cpu']} ({env['threads']} threads"
                        f"{', GPU ' + env['cuda'] if env['cuda'] else ''}), git {env['git_commit']}. "
                   + INDICATIVE.get(ctx.profile, "")))
    blocks.append(("p", STATS_NOTE))
    # the usual comparison table, measured
    rows: dict[str, dict[str, str]] = {}
    for r in results:
        ok = [rec for rec in r.records if "error" not in rec.result]
        try:
            summary = r.claim.summary_cells(ok, r.verdict) if ok else {}
        except Exception as e:  # noqa: BLE001 - one claim's summary bug must not lose the report
            summary = {}
            print(f"normrnn study: no summary cells for {r.claim.id}: {type(e).__name__}: {e}")
        for row, cells in summary.items():
            for col, text in cells.items():
                rows.setdefault(row, {})[col] = (rows.get(row, {}).get(col, "") + " " if rows.get(row, {}).get(col)
                                                 else "") + f"{text} [{r.claim.id}](#{anchor(r.claim.id)})"
    if rows:
        blocks.append(("h", 2, "The usual comparison table, measured", "summary"))
        blocks.append(("table", ["", *COLUMNS], [[row, *(cells.get(c, "–") for c in COLUMNS)]
                                                 for row, cells in rows.items()]))
    blocks.append(("h", 2, "Verdicts", "verdicts"))
    blocks.append(("table", ["claim", "verdict", "scale", "effect (paired, 95% CI)", "can this scale show it?",
                             "runs"],
                   [[f"[{r.claim.id} {r.claim.title}](#{anchor(r.claim.id)})",
                     r.verdict.label + (" (indicative)" if indicative else ""), r.verdict.scale, r.verdict.effect,
                     scale_cell(r.verdict), f"{len(r.records)} ({r.cached} cached)"] for r in results]))
    for r in results:
        c = r.claim
        blocks.append(("h", 2, f"{c.id}. {c.title}", anchor(c.id)))
        blocks.append(("p", f"**Claim.** {c.statement}"))
        blocks.append(("p", f"**Hypothesis.** {c.hypothesis}"))
        blocks.append(("p", f"**Setup.** {c.describe_setup(ctx)} Metric: {c.metric}."))
        blocks.append(("p", f"**Scale.** {r.verdict.scale}. Can this scale show it? {scale_cell(r.verdict)}."))
        if c.primary:
            blocks.append(("p", f"**Primary test.** {c.primary}."))
        construction = c.construction or "nothing: no part of this claim holds by construction."
        blocks.append(("p", f"**Measured.** {c.measured or 'every part of the claim is measured'}. "
                            f"**By construction.** {construction}"))
        tuned = tuned_rates(r.records)
        if tuned:
            blocks.append(("p", "**Tuned.** Learning rate per compared variant (each setting of the grid, shared by "
                                "its seeds), chosen from 0.5×/1×/2× the base rate on 20% of the updates: "
                                + "; ".join(f"{where}: {base:g} → {' / '.join(_rate(c) for c in chosen)}"
                                            for where, (base, chosen) in tuned.items()) + "."))
        if c.id in figures:
            blocks.append(("img", figures[c.id], f"{c.id}: {c.title}"))
        ok = [rec for rec in r.records if "error" not in rec.result]
        if ok:
            try:
                headers, table = c.table(ok)
                blocks.append(("table", headers, table))
            except Exception as e:  # noqa: BLE001 - a table bug must not hide the verdict
                blocks.append(("p", f"(table unavailable: {type(e).__name__}: {e})"))
        failed = [rec for rec in r.records if "error" in rec.result]
        if failed:
            blocks.append(("p", f"{len(failed)} run(s) failed, first: `{failed[0].result['error']}`"))
        div = divergence_cell(r.verdict)
        if div:
            blocks.append(("p", f"**Diverged runs** (left out of their arm's metric, counted here): {div}."))
        blocks.append(("p", f"**Verdict: {r.verdict.label}**{' (indicative)' if indicative else ''} at "
                            f"{r.verdict.scale}. Rule: {c.rule} Effect: {r.verdict.effect}. {r.verdict.reason}"))
    return blocks


def _rate(c) -> str:
    return c if isinstance(c, str) else f"{c:g}"


def scale_cell(v) -> str:
    if v.scale_ok is None:
        return "not checked"
    return f"{'yes' if v.scale_ok else 'no'}: {v.scale_check}"


def divergence_cell(v) -> str:
    parts = [f"{arm}: {d['diverged']}/{d['runs']}" + (f" (at updates {', '.join(map(str, d['at_steps']))})"
                                                      if d.get("at_steps") else "")
             for arm, d in (v.divergence or {}).items() if d.get("diverged")]
    return "; ".join(parts)


def tuned_rates(records: list) -> dict:
    """{setting: (base lr, [chosen lr, ...])} from the runs' ``tuned_lr``: the setting is the run's grid
    coordinates without the seed (what its learning rate was searched for), plus the searched variant where the
    coordinates do not name it. More than one chosen rate means the search ran again for another seed (a resumed
    study) and chose differently."""
    out: dict = {}
    for rec in records:
        for t in rec.result.get("tuned_lr", []):
            parts = [f"{k}={v}" for k, v in rec.key.items() if k != "seed"]
            parts += [f"{k}={v}" for k, v in t.get("variant", {}).items() if k not in rec.key]
            where = ", ".join(parts) or t["norm"]
            base, chosen = out.setdefault(where, (t["base_lr"], []))
            text = t["chosen"] if not t.get("all_diverged") else f"{t['chosen']:g} (every trial diverged)"
            if text not in chosen:
                chosen.append(text)
    return out


def render_markdown(blocks: list[tuple], out: Path) -> str:
    lines = []
    for b in blocks:
        if b[0] == "h":
            lines += [("#" * b[1]) + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines.append("| " + " | ".join(esc(h) for h in b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in b[2]]
            lines.append("")
        elif b[0] == "img":
            lines += [f"![{b[2]}]({Path(b[1]).relative_to(out).as_posix()})", ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    """Escape, then turn **bold**, `code` and [label](#anchor) into HTML."""
    import re

    s = html.escape(str(text))
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<i>\1</i>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    s = re.sub(r"\[([^\]]+)\]\((#[\w-]+)\)", r'<a href="\2">\1</a>', s)
    for label, colour in VERDICT_COLOURS.items():
        s = s.replace(f"<b>Verdict: {label}</b>", f'<b class="verdict" style="color:{colour}">Verdict: {label}</b>')
    return s


def render_html(blocks: list[tuple]) -> str:
    body = []
    for b in blocks:
        if b[0] == "h":
            ident = f' id="{b[3]}"' if b[3] else ""
            body.append(f"<h{b[1]}{ident}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline_html(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(v)}</td>" for v in row) + "</tr>" for row in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
             "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}td,th{border:1px solid #d0d7de;"
             "padding:.3rem .5rem;vertical-align:top}th{background:#f6f8fa}img{max-width:100%}"
             "figure{margin:1rem 0}figcaption{color:#57606a;font-size:.85rem}code{background:#f6f8fa}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>normrnn study</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def draw_figures(results: list[ClaimResult], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for r in results:
        ok = [rec for rec in r.records if "error" not in rec.result]
        if not ok:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        try:
            r.claim.figure(ok, ax)
            ax.set_title(f"{r.claim.id}: {r.claim.title}", fontsize=10)
            fig.tight_layout()
            path = out / "figures" / f"{r.claim.id}.png"
            fig.savefig(path, dpi=110)
            figures[r.claim.id] = path
        except Exception as e:  # noqa: BLE001 - a plotting bug must not lose the numbers
            print(f"normrnn study: no figure for {r.claim.id}: {type(e).__name__}: {e}")
        finally:
            plt.close(fig)
    return figures


def write_report(results: list[ClaimResult], ctx: StudyContext, out: Path) -> dict[str, Path]:
    """Write report.md, report.html, figures/*.png and results.json into ``out``; return their paths."""
    out = Path(out)
    env = environment()
    figures = draw_figures(results, out)
    blocks = build_blocks(results, ctx, env, figures)
    paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "results.json"}
    paths["md"].write_text(render_markdown(blocks, out))
    paths["html"].write_text(render_html(blocks))
    data = {"environment": env, "profile": ctx.profile, "seeds": ctx.seeds, "device": ctx.device,
            "indicative": ctx.profile in ("smoke", "quick"), "how_to_read": STATS_NOTE, "claims": [
        {"id": r.claim.id, "title": r.claim.title, "statement": r.claim.statement, "hypothesis": r.claim.hypothesis,
         "metric": r.claim.metric, "rule": r.claim.rule, "primary": r.claim.primary, "measured": r.claim.measured,
         "by_construction": r.claim.construction, "verdict": r.verdict.label, "scale": r.verdict.scale,
         "scale_ok": r.verdict.scale_ok, "scale_check": r.verdict.scale_check, "divergence": r.verdict.divergence,
         "effect": r.verdict.effect, "reason": r.verdict.reason, "numbers": r.verdict.numbers, "seconds": r.seconds,
         "records": [{"key": rec.key, "result": rec.result} for rec in r.records]} for r in results]}
    paths["json"].write_text(json.dumps(_finite_json(data), indent=1, default=_json_default, allow_nan=False))
    return paths


def _finite_json(o: Any) -> Any:
    """NaN and ±inf (an interval from one pair, a diverged run) become null: results.json stays valid JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {(k if isinstance(k, (str, int, float, bool)) or k is None else str(k)): _finite_json(v)
                for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_json(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, float):
        return None
    return str(o)
