"""Real browser: headless Chromium opens the reports from disk with the network refused.

Checks: no console error (a Content-Security-Policy violation is one), no request leaving
the page (every request URL is ``file:`` or ``data:``), every group point's link opens an
existing report, and "download ratings" saves a valid ratings JSON. Screenshots (PNG) are
saved under the pytest tmp dir and their paths printed.

Chromium and chromedriver are taken from PATH. Only under CI (``CI=true``) does the session
fixture install them where missing (Debian's ``chromium``, ``chromium-driver``), and there a
missing browser fails the tests, since a skip would hide a broken setup. Elsewhere the tests
skip, saying what to install: a test run never changes a developer's system packages, even
as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bids_qc.group import write_group_outputs
from bids_qc.ratings import RATINGS_FILE, read_rating_file
from bids_qc.reports.participant import write_participant_report
from bids_qc.results import stage_result
from tests.system_tools import apt_install, say, unavailable, under_ci
from tests.test_reports_helpers import synthetic_result, tiny_png, tiny_volumes, write_results

#: The commands the tests need, and the Debian packages that provide them.
COMMANDS = ("chromium", "chromedriver")
PACKAGES = ["chromium", "chromium-driver"]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1280,1600",
         # Refuse the network: no name resolves and every proxy connection fails.
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
         "--proxy-bypass-list=<-loopback>")


def _chromium_plan() -> tuple[str, str]:
    """What the session does about Chromium: ``("use" | "install" | "skip", reason)``.

    ``use`` when Chromium and chromedriver are on PATH; otherwise ``install`` under CI
    (``CI=true``: a throw-away machine, where a skip would hide a broken setup) and ``skip``
    elsewhere, with the reason saying what to install.
    """
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if not missing:
        return "use", ""
    if under_ci():
        return "install", ""
    return "skip", (f"{' and '.join(missing)} not on PATH: install them (Debian: apt-get "
                    f"install {' '.join(PACKAGES)}); the tests install them only under "
                    "CI=true")


def _get_chromium(config) -> tuple[Path, Path]:
    """Chromium and chromedriver, installed under CI where missing (or skip/fail)."""
    action, reason = _chromium_plan()
    if action == "skip":
        pytest.skip(reason)
    if action == "install":
        took = apt_install(PACKAGES, list(COMMANDS))
        say(config, f"chromium install took {took:.1f} s")
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    chromium, driver = (shutil.which(name) for name in COMMANDS)
    return Path(chromium), Path(driver)


@pytest.fixture(scope="session")
def chrome_paths(pytestconfig) -> tuple[Path, Path]:
    """Chromium and chromedriver (see :func:`_get_chromium`)."""
    return _get_chromium(pytestconfig)


@pytest.fixture
def browser(chrome_paths, tmp_path):
    """A headless Chromium with the network refused, logging console and network events."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = Options()
    opts.binary_location = str(chrome_paths[0])
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(chrome_paths[1])), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {
        "behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    driver.get("about:blank")
    driver.get_log("performance")  # drop the start-up page's events
    driver.get_log("browser")
    yield driver
    driver.quit()


def _requests(driver) -> list[str]:
    """URLs requested by our pages (the browser's own new-tab page, chrome://, aside)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        params = message["params"]
        if not params.get("documentURL", "").startswith("chrome:"):
            urls.append(params["request"]["url"])
    return urls


def _assert_clean(driver) -> None:
    """No console error, and nothing requested but the file itself and data: URIs."""
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    leaving = [u for u in _requests(driver) if not u.startswith(("file:", "data:"))]
    assert leaving == []


def _screenshot(driver, path: Path, config) -> None:
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(max(height, 800), 8000))
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"
    say(config, f"screenshot: {path}")


@pytest.fixture
def reports(tmp_path) -> Path:
    """An output dir: five participant reports (figures, Grad-CAM) and the group report."""
    out = tmp_path / "out"
    vols = tiny_volumes(tmp_path / "vols")
    cam = tiny_png(tmp_path / "cam.png")
    classic = stage_result("classic", {}, [], [], [], {
        "template_space_t1w": str(vols["t1w_tpl"]), "template": {"file": str(vols["template"])}})
    shape = stage_result("shapeqc", {}, [], [], [], {"gradcam": {"left_putamen": str(cam)}})
    inputs = {"seg": str(vols["seg"]), "seg_reference": str(vols["t1w_tpl"])}
    results = [synthetic_result("sub-01_T1w", rmse=25.0, stages=[shape]),
               synthetic_result("sub-02_T1w", dice=0.4),
               synthetic_result("sub-03_T1w", error="<b>bad</b> codes in aseg.mgz"),
               synthetic_result("sub-04_T1w"), synthetic_result("sub-05_T1w", rmse=7.0)]
    write_results(out, results)
    for res in results:
        write_participant_report(res, out, stages=[classic, shape], qc_input=inputs)
    (out / RATINGS_FILE).write_text("bids_name\tcheck\trating\nsub-01_T1w\tregqc_flag\tFAIL\n"
                                    "sub-04_T1w\tregqc_flag\tPASS\n")
    write_group_outputs(out)
    return out


def test_participant_report_offline_and_ratings_download(browser, reports, tmp_path,
                                                         pytestconfig):
    page = reports / "sub-01_T1w.html"
    browser.get(page.as_uri())
    assert browser.title.startswith("sub-01_T1w")
    assert browser.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    browser.find_element("id", "rater").send_keys("ab")
    fieldsets = browser.find_elements("css selector", "fieldset.rating")
    assert len(fieldsets) >= 3
    fieldsets[0].find_element("css selector", "input[value=FAIL]").click()
    fieldsets[1].find_element("css selector", "input[value=PASS]").click()
    browser.find_element("id", "download-ratings").click()
    saved = browser.downloads / "sub-01_T1w_ratings.json"
    for _ in range(100):
        if saved.is_file() and saved.stat().st_size:
            break
        time.sleep(0.1)
    data = json.loads(saved.read_text())
    assert data["bids_name"] == "sub-01_T1w" and data["rater"] == "ab"
    assert [r["rating"] for r in data["ratings"]] == ["FAIL", "PASS"]
    assert len(read_rating_file(saved)) == 2  # bids_qc-ratings accepts it
    _screenshot(browser, tmp_path / "participant.png", pytestconfig)
    _assert_clean(browser)


def test_group_report_points_open_existing_reports(browser, reports, tmp_path, pytestconfig):
    browser.get((reports / "group_T1w.html").as_uri())
    points = browser.execute_script(
        "return Array.from(document.querySelectorAll('a.pt')).map(a => a.href.baseVal || "
        "a.getAttribute('href'))")
    metrics = browser.execute_script("return document.querySelectorAll('svg.strip').length")
    assert metrics >= 20 and len(points) >= 5 * metrics - 5
    flagged = browser.execute_script("return document.querySelectorAll('circle.own').length")
    assert flagged >= 2  # sub-01's RMSE, sub-02's Dice
    _screenshot(browser, tmp_path / "group.png", pytestconfig)
    _assert_clean(browser)
    for href in sorted(set(points)):
        target = reports / href
        assert target.is_file(), href
        browser.get(target.as_uri())
        assert browser.title.startswith(href.removesuffix(".html"))
    _assert_clean(browser)
    # A click on a point follows its link.
    browser.get((reports / "group_T1w.html").as_uri())
    browser.execute_script("document.querySelector('a.pt').dispatchEvent(new MouseEvent("
                           "'click', {bubbles: true, cancelable: true, view: window}))")
    for _ in range(50):
        if browser.current_url.endswith("_T1w.html") and "group" not in browser.current_url:
            break
        time.sleep(0.1)
    assert browser.current_url.endswith("_T1w.html") and "group_T1w" not in browser.current_url
    _assert_clean(browser)


def test_the_checks_catch_a_page_that_reaches_out(browser, tmp_path):
    """Negative control: a page loading from another host fails the checks above."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><head><title>leaky</title></head><body>'
                    '<img src="https://example.org/pixel.png"></body></html>')
    browser.get(page.as_uri())
    time.sleep(0.5)
    with pytest.raises(AssertionError):
        _assert_clean(browser)


@pytest.mark.parametrize(("ci", "found", "plan"), [
    ("true", True, "use"), (None, True, "use"),
    ("true", False, "install"),
    (None, False, "skip"), ("false", False, "skip"), ("1", False, "skip"),
])
def test_chromium_is_installed_only_under_ci(monkeypatch, ci, found, plan):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if found else None)
    action, reason = _chromium_plan()
    assert action == plan
    if plan == "skip":
        assert "chromium" in reason and "CI=true" in reason


def test_missing_chromium_outside_ci_skips_without_apt_even_as_root(monkeypatch):
    def no_install(*args, **kwargs):
        raise AssertionError(f"ran {args[0] if args else kwargs}")

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get"
                        else None)
    monkeypatch.setattr(subprocess, "run", no_install)
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        _get_chromium(None)
