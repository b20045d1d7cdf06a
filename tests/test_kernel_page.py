"""
What the kernel filter dropped, as an operator sees it: a real C{twistd
spectrum} with the filter on, SYNs from a blocked range and over an app's
C{per_ip_rate} dropped in this kernel, then the counts through the admin API
(C{GET .../spectrum/kernel}), C{/metrics} and the admin page in a headless
Chromium.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from test_admin_browser import FLAGS, SCREENSHOTS
from test_kernel import connects, require_kernel_filter, syn_burst

from adminkit import EDIT, document
from conftest import free_port, require_program
from procs import NamedOrigin, start_twistd, write_config

AUTH = {"Authorization": f"Bearer {EDIT}"}
#: SYNs sent from the blocked range
BLOCKED_SYNS = 3
#: a burst from one address against per_ip_rate
BURST = 40
RATE = 5
#: the blocking rule's id
RULE_ID = "f1" * 16


def kernel_status(admin: int) -> Dict[str, Any]:
    answer = requests.get(f"http://127.0.0.1:{admin}/client/v4/zones/local/spectrum/kernel", headers=AUTH, timeout=5)
    assert answer.status_code == 200, answer.text
    result: Dict[str, Any] = answer.json()["result"]
    return result


def metric_drops(admin: int) -> Dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "spectrum_kernel_dropped_total"
    }


@pytest.fixture
def dropping(tmp_path: Any) -> Any:
    """
    A twistd spectrum with the kernel filter on, and drops made in it:
    (admin port, edge port, its process).
    """
    require_kernel_filter()
    origin = NamedOrigin("origin")
    admin, edge = free_port(), free_port()
    game = {
        "name": "game",
        "protocol": f"tcp/{edge}",
        "ips": ["127.0.0.1"],
        "origin_direct": [f"tcp://127.0.0.1:{origin.port}"],
        "limits": {"per_ip_rate": RATE},
    }
    rules = [{"id": RULE_ID, "mode": "block", "configuration": {"target": "ip_range", "value": "127.1.0.0/16"}}]
    data = document([game], kernel_filter="on", access_rules=rules)
    data["admin"]["listen"] = f"tcp:{admin}:interface=127.0.0.1"
    proxy = start_twistd(write_config(tmp_path / "spectrum.json", data), tmp_path / "twistd.log", ports=[admin, edge])
    try:
        yield admin, edge, proxy
    finally:
        proxy.stop()
        origin.close()


def test_the_api_and_metrics_count_each_packet_dropped_in_the_kernel(dropping: Any) -> None:
    admin, edge, proxy = dropping
    before = kernel_status(admin)
    assert before == {"mode": "on", "active": True, "reason": "", "dropped": []}
    for index in range(BLOCKED_SYNS):
        assert not connects(edge, f"127.1.0.{index + 1}", timeout=0.3)
    syn_burst(edge, "127.0.0.77", BURST)
    dropped: List[Dict[str, Any]] = kernel_status(admin)["dropped"]
    by_reason = {drop["reason"]: drop for drop in dropped}
    assert set(by_reason) == {f"rule {RULE_ID}", "per_ip_rate"}
    assert all(drop["app"] == "game" and drop["bytes"] > 0 for drop in dropped)
    assert by_reason[f"rule {RULE_ID}"]["packets"] == BLOCKED_SYNS
    # The burst: the bucket (RATE, and what refilled meanwhile) got in.
    rated = by_reason["per_ip_rate"]["packets"]
    assert BURST - RATE - 5 <= rated <= BURST - RATE
    assert metric_drops(admin) == {f"rule {RULE_ID}": BLOCKED_SYNS, "per_ip_rate": rated}
    assert "Traceback" not in proxy.log()


def test_the_page_shows_what_the_kernel_dropped(dropping: Any) -> None:
    chromium = require_program("chromium")
    driver_path = require_program("chromedriver")
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    admin, edge, _ = dropping
    for index in range(BLOCKED_SYNS):
        assert not connects(edge, f"127.1.0.{index + 1}", timeout=0.3)
    options = Options()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1000")
    browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        browser.get(f"http://127.0.0.1:{admin}/")
        browser.find_element(By.ID, "token").send_keys(EDIT)
        browser.find_element(By.ID, "login").click()
        wait = WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,))
        row = f'#kernel tr[data-reason="rule {RULE_ID}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
        assert wait.until(lambda d: d.find_element(By.ID, "kernel-state").get_attribute("data-active")) == "true"
        cells = wait.until(lambda d: [td.text for td in d.find_elements(By.CSS_SELECTOR, row + " td")])
        assert cells[:3] == ["game", f"rule {RULE_ID}", str(BLOCKED_SYNS)]
        # One more, and the page follows.
        assert not connects(edge, "127.1.9.9", timeout=0.3)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row + " td:nth-child(3)").text == str(BLOCKED_SYNS + 1))
        os.makedirs(SCREENSHOTS, exist_ok=True)
        browser.execute_script("document.getElementById('kernel-panel').scrollIntoView()")
        time.sleep(0.2)
        browser.save_screenshot(os.path.join(SCREENSHOTS, "05-kernel-drops.png"))
    finally:
        browser.quit()
