"""The study report page in a real headless Chromium at 1400 px: every figure decodes and fits, the control
speaks one sentence per compressed model, nothing overflows the page sideways."""

from __future__ import annotations

import numpy as np

from compfair_tasks.stereoset import DOMAINS
from leaderboard.studies.report import build_report
from study_folders import cell, write_cell, write_study
from test_leaderboard_browser import driver  # noqa: F401 - the Chromium fixture


def test_study_page_figures_fit_and_the_control_is_said_per_model(driver, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    cells = []
    for i, step in enumerate((1000, 4000, 16000)):
        for compression in ("none", "dynamic-int8"):
            c = cell("pythia-70m-deduped", step, compression)
            rng = np.random.default_rng(10 * i + (compression != "none"))
            write_cell(tmp_path, c, [(d, int(rng.random() < 0.6), int(rng.binomial(2, 0.4 + 0.15 * i)))
                                     for d in DOMAINS for _ in range(10)])
            cells.append(c)
    write_study(tmp_path, cells, control={"quality": "lms", "compare": ["ss"]})
    index = build_report(tmp_path, n_resamples=100)
    driver.get(index.as_uri())
    images = driver.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) >= 4  # control difference and scatter, LMS vs SS, one along the axis per plotted metric
    for image in images:
        natural, shown = driver.execute_script(
            "return [arguments[0].complete && arguments[0].naturalWidth, arguments[0].getBoundingClientRect().width]",
            image)
        assert natural > 0 and shown <= 1400
    assert len(driver.find_elements(By.CSS_SELECTOR, "ul.verdicts li")) == 3
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 1400
