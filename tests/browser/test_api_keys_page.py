"""The API keys page in Chromium, with login on: log in, create a key (shown once), use it with the `openai` SDK,
find only its prefix in the list, revoke it and see the SDK refused; at 390 px the page fits the window."""

from __future__ import annotations

import re
from collections.abc import Iterator

import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from app.processes import free_port
from app.web.security import hash_password
from tests.conftest import stack_env
from tests.openai_sdk import client
from tests.processes import Processes

PASSWORD = "a long admin password"


@pytest.fixture(scope="module")
def login_url(tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_database_url: str) -> Iterator[str]:
    """The web app alone, with login on (keys need no worker)."""
    root = tmp_path_factory.mktemp("keys-page")
    port = free_port()
    env = stack_env(root / "data", redis_url, module_database_url, port) | {
        "LORADECK_REQUIRE_LOGIN": "true",
        "LORADECK_ADMIN_PASSWORD_HASH": hash_password(PASSWORD),
    }
    processes = Processes(root, env)
    processes.migrate()
    try:
        processes.start_web(port, log="web.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        processes.close()


def files_of(url: str, key: str) -> list[str]:
    return [f.id for f in client(url, key).files.list()]


def test_create_use_and_revoke_a_key_in_the_browser(login_url: str, page: Page) -> None:
    page.goto(login_url + "/")
    page.get_by_label("admin password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.locator("nav").get_by_role("link", name="Keys").click()
    expect(page).to_have_url(login_url + "/settings/keys")

    page.get_by_label("name").fill("notebook")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#created-key")).to_contain_text("it is not shown again")
    key = page.locator("#new-key").inner_text().strip()
    assert re.fullmatch(r"ldk-[A-Za-z0-9_-]{43}", key)
    assert files_of(login_url, key) == []  # the key works at once

    page.goto(login_url + "/settings/keys")  # shown once: the list has its prefix only
    row = page.locator("tbody tr", has_text="notebook")
    expect(row).to_contain_text(key[:12] + "…")
    assert key not in page.content()
    page.reload()
    expect(row.locator("td[data-label='Last used']")).not_to_have_text("never")

    row.get_by_role("button", name="Revoke").click()
    expect(row.locator("td[data-label='Revoked']")).to_contain_text("UTC")
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    with pytest.raises(openai.AuthenticationError):
        files_of(login_url, key)


def test_the_keys_page_fits_a_phone(login_url: str, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    phone = context.new_page()
    try:
        phone.goto(login_url + "/login?next=/settings/keys")
        phone.get_by_label("admin password").fill(PASSWORD)
        phone.get_by_role("button", name="Log in").click()
        phone.get_by_label("name").fill("a phone's key")
        phone.get_by_role("button", name="Create key").click()
        expect(phone.locator("#new-key")).to_be_visible()
        for _ in range(2):  # the page as created, then the list alone
            overflow = phone.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the keys page is {overflow} px wider than a 390 px window"
            phone.goto(login_url + "/settings/keys")
    finally:
        context.close()
