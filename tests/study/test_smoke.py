"""The smoke profile of every claim, end to end: runs train, the report is written and holds every claim, and every
output file (report.md, report.html, results.json, the printed table) carries each verdict's label and scale."""
import json
from html.parser import HTMLParser

from normrnn.study import StudyContext, run_study
from normrnn.study.claims import claim_ids
from normrnn.study.cli import verdict_table
from normrnn.study.core import VERDICTS


class _Report(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.text = set(), 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids.add(attrs.get("id"))
        self.imgs += tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,")

    def handle_data(self, data):
        self.text.append(data)


def test_smoke_profile_of_every_claim(tmp_path):
    ctx = StudyContext(profile="smoke", seeds=1, progress=False)
    results, paths = run_study(ctx, tmp_path)
    ids = claim_ids()
    assert [r.claim.id for r in results] == ids
    failed = {r.claim.id: rec.result["error"] for r in results for rec in r.records if "error" in rec.result}
    assert not failed, failed
    report = _Report()
    report.feed(paths["html"].read_text())
    html_text = " ".join(report.text)
    assert {f"claim-{c.lower()}" for c in ids} <= report.ids
    assert report.imgs == len(ids)  # one embedded figure per claim
    data = json.loads(paths["json"].read_text())
    assert [c["id"] for c in data["claims"]] == ids
    assert all(c["verdict"] == "inconclusive" for c in data["claims"])  # one seed decides nothing
    md = paths["md"].read_text()
    printed = verdict_table(results, ctx)
    for r, c in zip(results, data["claims"]):
        v = r.verdict
        assert v.label in VERDICTS and v.scale and "smoke profile" in v.scale
        assert c["scale"] == v.scale and c["scale_ok"] in (True, False, None) and c["scale_check"]
        assert c["primary"] and "measured" in c and "by_construction" in c
        for text in (md, html_text, printed):
            assert v.scale in text, (r.claim.id, v.scale)
        assert f"## {r.claim.id}." in md and f"**Verdict: {v.label}**" in md
    for text in (md, html_text):
        assert "95% CI" in text and "mean ± SD" in text and "Holm" in text
    assert "indicative" in md.lower() and "mean nothing" in printed
