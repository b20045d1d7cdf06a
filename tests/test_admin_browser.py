"""
The admin page in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) against a real C{twistd spectrum}: sign
in, see the app and its origin's health, add a block rule through the form,
see a connection from that address refused in the page's events, edit and
delete the rule. Screenshots go to C{artifacts/screenshots/}.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Iterator

import pytest

from adminkit import EDIT, document
from conftest import free_port, require_program
from procs import ROOT, NamedOrigin, start_twistd, write_config

SCREENSHOTS = os.path.join(ROOT, "artifacts", "screenshots")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def reply_from(port: int, bind: str) -> bytes:
    """
    What a client at C{bind} gets from the edge before closing its side.
    """
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((bind, 0))
        s.connect(("127.0.0.1", port))
        received = b""
        try:
            while not received.endswith(b"\n"):
                chunk = s.recv(100)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            pass
        return received


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = require_program("chromium")
    driver_path = require_program("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_signs_in_blocks_an_address_and_shows_the_refusal(browser: Any, tmp_path: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    os.makedirs(SCREENSHOTS, exist_ok=True)
    origin = NamedOrigin("origin-one")
    admin_port, edge = free_port(), free_port()
    closed = free_port()
    game = {
        "name": "game",
        "protocol": f"tcp/{edge}",
        "ips": ["127.0.0.1"],
        "origin_pool": {
            "name": "game-servers",
            "origins": [
                {"name": "one", "address": "127.0.0.1", "port": origin.port},
                {"name": "two", "address": "127.0.0.1", "port": closed},
            ],
            "monitor": {"type": "tcp", "interval": 0.5, "timeout": 0.5, "consecutive_down": 1, "consecutive_up": 1},
        },
    }
    data = document([game])
    data["admin"]["listen"] = f"tcp:{admin_port}:interface=127.0.0.1"
    config = write_config(tmp_path / "spectrum.json", data)
    proxy = start_twistd(config, tmp_path / "twistd.log", ports=[admin_port, edge])
    # The tables are redrawn every two seconds: an element found a moment
    # ago may be gone, so waits look again.
    wait = WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,))

    def shot(name: str) -> None:
        browser.save_screenshot(os.path.join(SCREENSHOTS, name))

    try:
        assert reply_from(edge, "127.0.0.9") == b"origin-one\n"
        browser.get(f"http://127.0.0.1:{admin_port}/")
        # A wrong token is refused on the page.
        browser.find_element(By.ID, "token").send_keys("not-the-token-at-all")
        browser.find_element(By.ID, "login").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "login-error"), "invalid token"))
        shot("00-login-refused.png")

        token = browser.find_element(By.ID, "token")
        token.clear()
        token.send_keys(EDIT)
        browser.find_element(By.ID, "login").click()

        # The app, its port and its origins' live health: one up, the one
        # nothing listens for goes down at its first probe.
        app_css = '#apps tr[data-app="game"]'
        wait.until(lambda d: f"127.0.0.1:{edge}" in d.find_element(By.CSS_SELECTOR, app_css).text)

        def fresh(read: Any) -> Any:
            # Read again when a redraw replaced the element under our feet.
            for _ in range(20):
                try:
                    return read()
                except StaleElementReferenceException:
                    time.sleep(0.05)
            return read()

        def origin_state(name: str) -> Any:
            def read() -> Any:
                for item in browser.find_elements(By.CSS_SELECTOR, app_css + " .origin"):
                    if item.text.startswith(name + " "):
                        return item.get_attribute("data-healthy"), item.text
                return None

            return fresh(read)

        wait.until(lambda _: (origin_state("two") or ("",))[0] == "false")
        healthy, text = origin_state("one")
        assert healthy == "true" and f"127.0.0.1:{origin.port}" in text and text.endswith("up")
        assert origin_state("two")[1].endswith("down")
        wait.until(lambda d: "two" in d.find_element(By.ID, "health").text)
        assert browser.execute_script("return sessionStorage.getItem('spectrum-admin-token')") == EDIT
        # Live: three open connections moving bytes show in the table and
        # the charts.
        held = [socket.create_connection(("127.0.0.1", edge), timeout=5) for _ in range(3)]
        try:
            for sock in held:
                assert sock.recv(100) == b"origin-one\n"
            open_cell = app_css + ' td[data-label="Open"]'
            for _ in range(30):
                for sock in held:
                    sock.sendall(b"z" * 20000 + b"\n")
                    received = 0
                    while received < 20001:
                        received += len(sock.recv(65536))
                if fresh(lambda: browser.find_element(By.CSS_SELECTOR, open_cell).text) == "3":
                    break
                time.sleep(0.1)
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, open_cell).text == "3")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-connections path.line"))
            time.sleep(1.2)
            shot("01-dashboard.png")
        finally:
            for sock in held:
                sock.close()

        # Add a block rule through the form.
        Select(browser.find_element(By.ID, "rule-mode")).select_by_value("block")
        Select(browser.find_element(By.ID, "rule-target")).select_by_value("ip")
        browser.find_element(By.ID, "rule-value").send_keys("127.0.0.9")
        browser.find_element(By.ID, "rule-notes").send_keys("blocked from the page")
        browser.find_element(By.ID, "rule-add").click()
        rule_xpath = '//table[@id="rules"]//tr[td[contains(., "127.0.0.9")]]'
        wait.until(EC.presence_of_element_located((By.XPATH, rule_xpath)))

        def rule_row() -> Any:
            row = browser.find_element(By.XPATH, rule_xpath)
            return row.text, row.get_attribute("data-rule")

        rule_text, rule_id = fresh(rule_row)
        assert "block" in rule_text and "blocked from the page" in rule_text
        shot("02-rule-added.png")

        # The next connection from that address is refused, and the page says so.
        assert reply_from(edge, "127.0.0.9") == b""
        assert reply_from(edge, "127.0.0.1") == b"origin-one\n"
        refused_css = '#refused tr[data-client="127.0.0.9"]'
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, refused_css)))
        refused_text = fresh(lambda: browser.find_element(By.CSS_SELECTOR, refused_css).text)
        assert "403" in refused_text and "127.0.0.9" in refused_text
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#events tr[data-event="clientFiltered"]'))
        browser.execute_script("document.getElementById('refused').scrollIntoView()")
        shot("03-refused.png")

        # Edit the rule to whitelist: the address gets through again.
        row_css = f'#rules tr[data-rule="{rule_id}"]'

        def click(css: str) -> Any:
            return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True)

        click(row_css + ' [data-action="edit"]')
        fresh(lambda: Select(browser.find_element(By.CSS_SELECTOR, row_css + " select")).select_by_value("whitelist"))
        click(row_css + ' [data-action="save"]')
        wait.until(lambda d: "whitelist" in d.find_element(By.CSS_SELECTOR, row_css).text)
        assert reply_from(edge, "127.0.0.9") == b"origin-one\n"

        # Delete it.
        click(row_css + ' [data-action="delete"]')
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, row_css))

        # Readable on a phone.
        browser.set_window_size(390, 844)
        browser.execute_script("window.scrollTo(0, 0)")
        wait.until(lambda d: d.find_element(By.ID, "apps").is_displayed())
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px screen"
        shot("04-phone.png")
    finally:
        proxy.stop()
        origin.close()
    assert "Traceback" not in proxy.log()


def test_page_creates_edits_and_deletes_an_app(browser: Any, tmp_path: Any) -> None:
    """
    What the seed does in Cloudflare's dashboard, on the page: create an
    app (a client connects through it), see the last hour per app on
    sign-in, see refusals by the rule's notes and grouped per client, edit
    the app, delete it; an origin without a monitor is "not monitored"; a
    read-only token sees no write controls; at 390 px nothing is clipped
    and the page is a few screens long.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from adminkit import READ

    os.makedirs(SCREENSHOTS, exist_ok=True)
    one, two = NamedOrigin("origin-one"), NamedOrigin("origin-two")
    admin_port, fixed, edge = free_port(), free_port(), free_port()
    plain = {
        "name": "plain",
        "protocol": f"tcp/{fixed}",
        "ips": ["127.0.0.1"],
        "origin_pool": {"origins": [{"name": "only", "address": "127.0.0.1", "port": one.port}]},
    }
    data = document([plain])
    data["admin"]["listen"] = f"tcp:{admin_port}:interface=127.0.0.1"
    config = write_config(tmp_path / "spectrum.json", data)
    proxy = start_twistd(config, tmp_path / "twistd.log", ports=[admin_port, fixed])
    wait = WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,))

    def text_of(css: str) -> str:
        for _ in range(20):
            try:
                return " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, css))
            except StaleElementReferenceException:
                time.sleep(0.05)
        return ""

    def sign_in(token: str) -> None:
        browser.get(f"http://127.0.0.1:{admin_port}/")
        # Signed in from this tab's session already: sign out first.
        wait.until(
            lambda d: d.find_element(By.ID, "logout").is_displayed() or d.find_element(By.ID, "token").is_displayed()
        )
        if browser.find_element(By.ID, "logout").is_displayed():
            browser.find_element(By.ID, "logout").click()
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: "plain" in text_of("#apps tbody"))

    try:
        sign_in(EDIT)
        # No monitor: the origin is not claimed to be up.
        wait.until(lambda d: "not monitored" in text_of('#apps tr[data-app="plain"] .origin'))
        assert text_of('#apps tr[data-app="plain"] .pill.good') == ""

        # Create an app through the form.
        browser.find_element(By.ID, "app-new").click()
        browser.find_element(By.ID, "app-name").send_keys("web")
        Select(browser.find_element(By.ID, "app-protocol")).select_by_value("tcp")
        browser.find_element(By.ID, "app-port").send_keys(str(edge))
        browser.find_element(By.ID, "app-ip").send_keys("127.0.0.1")
        browser.find_element(By.ID, "app-origins").send_keys(f"127.0.0.1:{one.port}")
        browser.find_element(By.ID, "app-host").send_keys("web.example.com")
        Select(browser.find_element(By.ID, "app-tls")).select_by_value("off")
        Select(browser.find_element(By.ID, "app-proxy")).select_by_value("off")
        browser.find_element(By.ID, "app-save").click()
        row = '#apps tr[data-app="web"]'
        wait.until(lambda d: f"127.0.0.1:{edge}" in text_of(row))
        assert browser.find_element(By.ID, "app-form").get_attribute("hidden") is not None
        for _ in range(2):
            assert reply_from(edge, "127.0.0.1") == b"origin-one\n"

        # Refusals by a rule's notes, one row per repeating client.
        browser.find_element(By.ID, "rule-value").send_keys("127.0.0.9")
        browser.find_element(By.ID, "rule-notes").send_keys("port scanner")
        browser.find_element(By.ID, "rule-add").click()
        wait.until(lambda d: "port scanner" in text_of("#rules tbody"))
        for _ in range(3):
            assert reply_from(edge, "127.0.0.9") == b""
        refused = '#refused tr[data-client="127.0.0.9"]'
        wait.until(lambda d: "port scanner" in text_of(refused) and "×3" in text_of(refused))
        assert len(browser.find_elements(By.CSS_SELECTOR, refused)) == 1

        # Signing in again shows the last hour per app, from the analytics API.
        sign_in(EDIT)
        chart = '#hour-charts figure[data-app="web"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, chart + " path.line"))
        assert int(browser.find_element(By.CSS_SELECTOR, chart).get_attribute("data-connections")) == 2
        wait.until(lambda d: "×3" in text_of(refused))
        browser.set_window_size(1280, 1000)
        shot = os.path.join(SCREENSHOTS, "10-apps-desktop.png")
        browser.save_screenshot(shot)

        # At 390 px: nothing wider than the screen, a few screens long.
        browser.set_window_size(390, 844)
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        height = browser.execute_script("return document.documentElement.scrollHeight")
        assert width <= 390, f"the page is {width}px wide on a 390px screen"
        assert height <= 6 * 844, f"the page is {height}px long on a phone"
        # The whole page in one picture: a window as tall as the page.
        browser.set_window_size(390, height)
        browser.save_screenshot(os.path.join(SCREENSHOTS, "11-apps-phone.png"))
        browser.set_window_size(1280, 1000)

        # Edit: another origin.
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row + ' [data-action="edit"]').click() or True)
        assert browser.find_element(By.ID, "app-origins").get_attribute("value") == f"127.0.0.1:{one.port}"
        origins = browser.find_element(By.ID, "app-origins")
        origins.clear()
        origins.send_keys(f"127.0.0.1:{two.port}")
        browser.find_element(By.ID, "app-save").click()
        wait.until(lambda d: f"127.0.0.1:{two.port}" in text_of(row + " .origins"))
        assert reply_from(edge, "127.0.0.1") == b"origin-two\n"

        # Delete it.
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row + ' [data-action="delete"]').click() or True)
        wait.until(lambda d: d.switch_to.alert).accept()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, row))
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", edge), timeout=2).close()

        # A read-only token: no write controls at all.
        sign_in(READ)
        wait.until(lambda d: "port scanner" in text_of("#rules tbody"))
        shown = [e for e in browser.find_elements(By.CSS_SELECTOR, ".write, [data-action]") if e.is_displayed()]
        assert shown == []
    finally:
        proxy.stop()
        one.close()
        two.close()
    assert "Traceback" not in proxy.log()
