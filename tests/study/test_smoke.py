"""The smoke profile of every claim, end to end: runs train, the report is written and holds every claim, and every
output file (report.md, report.html, results.json, the printed table) carries each verdict's label and scale."""
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

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


CTX = StudyContext(profile="smoke", seeds=1, progress=False)


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """The smoke profile of every claim, run once for the tests of this module."""
    return run_study(CTX, tmp_path_factory.mktemp("smoke"))


def test_smoke_profile_of_every_claim(smoke_study):
    ctx = CTX
    results, paths = smoke_study
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


# A real browser: Chromium from Debian's packages (CI: apt-get install -y --no-install-recommends chromium).
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
PROBE = """<script>
window.addEventListener("load", () => {
  const out = {sections: {}, figures: {}};
  for (const h of document.querySelectorAll("h2[id^=claim-]")) {
    const r = h.getBoundingClientRect();
    out.sections[h.id] = r.height > 0 && r.width > 0;
  }
  for (const img of document.querySelectorAll("figure img")) {
    const r = img.getBoundingClientRect();
    out.figures[img.alt] = img.complete && img.naturalWidth > 100 && r.height > 50;
  }
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args, timeout=120):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--hide-scrollbars", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y --no-install-recommends chromium")
def test_report_renders_in_headless_chromium(smoke_study, tmp_path):
    """Every claim's section and figure render in a real browser, and a screenshot of the page is not blank."""
    results, paths = smoke_study
    page = tmp_path / "probe.html"
    page.write_text(paths["html"].read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", page.as_uri()).stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    probe = json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"'))
    ids = claim_ids()
    assert probe["sections"] == {f"claim-{c.lower()}": True for c in ids}
    assert len(probe["figures"]) == len(ids) and all(probe["figures"].values()), probe["figures"]
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,4000", paths["html"].as_uri())
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] == 4000 and pixels.shape[1] == 1280
    assert pixels[..., :3].std() > 0.05  # text, tables and figures, not a blank page
