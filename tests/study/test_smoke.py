"""The smoke profile of every claim, end to end: runs train, the report is written and holds every claim."""
import json
from html.parser import HTMLParser

from normrnn.study import StudyContext, run_study
from normrnn.study.claims import MODULES


class _Report(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs = set(), 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids.add(attrs.get("id"))
        self.imgs += tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,")


def test_smoke_profile_of_every_claim(tmp_path):
    results, paths = run_study(StudyContext(profile="smoke", seeds=1, progress=False), tmp_path)
    assert [r.claim.id for r in results] == list(MODULES)
    failed = {r.claim.id: rec.result["error"] for r in results for rec in r.records if "error" in rec.result}
    assert not failed, failed
    report = _Report()
    report.feed(paths["html"].read_text())
    assert {f"claim-{c.lower()}" for c in MODULES} <= report.ids
    assert report.imgs == len(MODULES)  # one embedded figure per claim
    data = json.loads(paths["json"].read_text())
    assert [c["id"] for c in data["claims"]] == list(MODULES)
    assert all(c["verdict"] == "inconclusive" for c in data["claims"])  # one seed decides nothing
    md = paths["md"].read_text()
    assert all(f"## {c}." in md for c in MODULES)
