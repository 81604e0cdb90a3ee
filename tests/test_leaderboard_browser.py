"""The leaderboard page in a real headless Chromium: rows, plots and click-to-sort, from file:// offline.

Chromium and its driver are Debian packages (`make browser`). Selenium is pointed at
/usr/bin/chromedriver explicitly so that Selenium Manager never tries to download a driver.
In CI (CI=true) a missing browser fails the test; locally it skips with the fix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from leaderboard.cli import main as leaderboard_main
from leaderboard_results import write_compression, write_run

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _browser_or_skip() -> str:
    binary = next((shutil.which(name) for name in CHROMIUM_NAMES if shutil.which(name)), None)
    if binary and CHROMEDRIVER.exists():
        return binary
    reason = "headless Chromium not installed: run `make browser` (Debian packages chromium, chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def driver(tmp_path, monkeypatch):
    binary = _browser_or_skip()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never go to the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield browser
    browser.quit()


@pytest.fixture
def site(tmp_path) -> Path:
    out = tmp_path / "out"
    teacher = tmp_path / "ckpt" / "teacher"
    teacher.mkdir(parents=True)
    student = tmp_path / "ckpt" / "student"
    write_compression(student, "distill", str(teacher), 60_000_000, 240_000_000, layers=6)
    rows = {str(teacher): (124_000_000, 30.0, 61.0, 0.40), str(student): (60_000_000, 38.0, 57.0, 0.30),
            "gpt2-medium": (355_000_000, 22.0, 64.0, 0.45)}
    for name, (params, ppl, ss, emt) in rows.items():
        samples = {"compfair_toxicity_rtp_offline": [{"doc_id": i, "emt": emt + 0.01 * (i % 5)} for i in range(20)]}
        write_run(out, name, {"compfair_ppl_bold_wiki": {"word_perplexity": ppl},
                              "compfair_stereoset": {"ss": ss, "lms": 90.0, "icat": 2 * min(ss, 100 - ss) * 0.9},
                              "compfair_toxicity_rtp_offline": {"emt": emt, "tox_prob": emt / 2}},
                  samples, params=params)
    assert leaderboard_main([str(out), "-o", str(tmp_path / "site")]) == 0
    return tmp_path / "site" / "index.html"


def _column(driver, table_id: str, header_text: str) -> list[str]:
    from selenium.webdriver.common.by import By

    headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th")]
    index = next(i for i, h in enumerate(headers) if h.startswith(header_text))
    return [row.find_elements(By.TAG_NAME, "td")[index].text
            for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")]


def test_page_rows_plots_and_sorting(driver, site, tmp_path):
    from selenium.webdriver.common.by import By

    driver.get(site.as_uri())
    assert driver.title == "compfair leaderboard"
    assert sorted(_column(driver, "leaderboard", "Model")) == ["gpt2-medium", "student", "teacher"]

    images = driver.find_elements(By.CSS_SELECTOR, "figure img")
    files = [image.get_attribute("data-file") for image in images]
    assert files == ["perplexity_vs_stereoset_ss.png", "toxicity_vs_fluency.png", "parameters_vs_fairness.png"]
    for image, name in zip(images, files):  # decoded by the browser from the inlined PNG: the file's own size
        width = int.from_bytes((site.parent / name).read_bytes()[16:20], "big")  # PNG IHDR width
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == width

    header = next(h for h in driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
                  if h.text.startswith("BOLD-wiki PPL"))
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert _column(driver, "leaderboard", "Model") == ["gpt2-medium", "teacher", "student"]
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert _column(driver, "leaderboard", "Model") == ["student", "teacher", "gpt2-medium"]

    assert _column(driver, "paired", "model") == ["student"]  # student vs its teacher, found automatically
    driver.save_screenshot(str(tmp_path / "page.png"))
    if os.environ.get("COMPFAIR_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["COMPFAIR_SCREENSHOT"])


def test_missing_browser_fails_in_ci_and_skips_locally(monkeypatch):
    import test_leaderboard_browser as module

    monkeypatch.setattr(module.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="make browser"):
        module._browser_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium-driver"):
        module._browser_or_skip()
