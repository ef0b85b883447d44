"""The HTML report in a real browser: headless Chromium loads it and every figure renders.

Needs the Debian packages `chromium` (and `chromium-driver`, unused here):
    apt-get install -y chromium chromium-driver
and skips, saying why, when no Chromium binary is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fne.reporting.report import report
from tests.test_report import fake_metrics, make_runs, write_run


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


BROWSER = chromium()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium binary (/usr/bin/chromium absent): apt-get install -y chromium")

CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  var pre = document.createElement('pre');
  pre.id = 'fne-check';
  pre.textContent = 'FNE-CHECK images=' + imgs.length + ' rendered=' + ok.length +
    ' widths=' + imgs.map(function (i) { return i.naturalWidth; }).join(',') +
    ' best=' + document.querySelectorAll('td.best').length +
    ' warning=' + document.querySelectorAll('#random-weights-warning').length;
  document.body.appendChild(pre);
});
</script>
"""


def run_browser(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def html_report(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    runs = make_runs(base / "runs")
    write_run(runs, "r/random", fake_metrics("fne+logreg", 0.4, 0.02, 0.4, 0.02, dataset="noise", weights="random"))
    report([runs], base / "rep")
    return base / "rep" / "report.html"


def test_figures_render_in_headless_chromium(html_report, tmp_path):
    page = tmp_path / "check.html"  # a copy with a probe script; the report itself has no script
    page.write_text(html_report.read_text().replace("</body>", CHECK + "</body>"))
    r = run_browser(["--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--dump-dom",
                     page.as_uri()], tmp_path / "profile")
    m = re.search(r"FNE-CHECK images=(\d+) rendered=(\d+) widths=([\d,]*) best=(\d+) warning=(\d+)", r.stdout)
    assert m, f"probe did not run: rc={r.returncode} stderr={r.stderr[-2000:]}"
    images, rendered = int(m.group(1)), int(m.group(2))
    assert images == 9  # 3 datasets x (bars, accuracy-time, confusion)
    assert rendered == images, m.group(0)
    assert all(int(w) > 200 for w in m.group(3).split(","))
    assert int(m.group(4)) == 3 and int(m.group(5)) == 1  # best accuracy, class accuracy, seconds; one warning


def test_screenshot_shows_the_report(html_report, tmp_path):
    shot = tmp_path / "report.png"
    r = run_browser(["--hide-scrollbars", "--window-size=1200,2600", f"--screenshot={shot}",
                     html_report.as_uri()], tmp_path / "profile")
    assert shot.is_file(), f"no screenshot: rc={r.returncode} stderr={r.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2600, 1200)
    assert img.std() > 20  # not a blank page
    # the random-weights warning box (#fdecea background) and the accuracy bars (#3b73b9) are painted
    def share(rgb, tol=12):
        return (np.abs(img - np.array(rgb)).max(axis=2) <= tol).mean()

    assert share((0xfd, 0xec, 0xea)) > 0.002
    assert share((0x3b, 0x73, 0xb9)) > 0.001
