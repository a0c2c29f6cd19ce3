"""The admin page (/admin) in a real browser: headless Chromium driven by
Playwright, against the real exdaas binary over a fresh data folder.
Each test does what a person does, and checks the result through the page
and through the HTTP API. Screenshots of the main views go to
target/screenshots/ for review. Run by scripts/browser-test.sh."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

ADMIN = "admin-key-for-the-browser-0123"
READER = "reader-key-for-the-browser-0123"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "target" / "screenshots"
BINARY = Path(os.environ.get("EXDAAS_BIN", ROOT / "target" / "release" / "exdaas"))


@pytest.fixture(scope="module")
def server():
    folder = tempfile.mkdtemp(prefix="exdaas-browser-")
    env = dict(
        os.environ,
        DETS_ROOT=f"{folder}/data",
        EXDAAS_BACKUP_DIR=f"{folder}/backups",
        PORT="0",
        EXDAAS_LISTEN_ADDR="127.0.0.1",
        EXDAAS_API_KEYS=f"admin:{ADMIN};read:{READER}",
        EXDAAS_LOG_FORMAT="json",
        RUST_LOG="warn,exdaas::app=info",
    )
    env.pop("EXDAAS_DATABASE_URL", None)
    log = open(f"{folder}/server.log", "w+")
    process = subprocess.Popen([str(BINARY)], env=env, stdout=log, stderr=log)
    port = None
    for _ in range(300):
        log.seek(0)
        found = re.search(r'"message":"exdaas listening".*?"port":(\d+)', log.read())
        if found:
            port = int(found.group(1))
            break
        assert process.poll() is None, "the server exited before listening"
        time.sleep(0.1)
    assert port, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    assert process.wait(timeout=30) == 0, "the server stops cleanly"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is needed (scripts/browser-test.sh installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, f"the page's script failed: {errors}"


def call(server, method, path, body=None, key=ADMIN, headers=None):
    """The HTTP API, as another client sees it: (status, JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if text else None


def shot(page: Page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Without a passing notice over the view.
    page.evaluate("document.getElementById('toast').classList.remove('show')")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, server: str, key: str):
    page.goto(server + "/admin")
    page.get_by_label("API key").fill(key)
    # By keyboard: Enter submits.
    page.get_by_label("API key").press("Enter")
    expect(page.get_by_role("heading", name="Collections")).to_be_visible()


def test_sign_in_refuses_a_wrong_key_and_keeps_the_key_for_the_tab(page, server):
    page.goto(server + "/admin")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot(page, "sign-in")
    page.get_by_label("API key").fill("not-a-key-at-all-0123456789")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_contain_text("not accepted")
    sign_in(page, server, ADMIN)
    expect(page.locator("#who")).to_contain_text("admin key")
    # A reload keeps the session (sessionStorage), signing out forgets it.
    page.reload()
    expect(page.get_by_role("heading", name="Collections")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_create_edit_conflict_and_delete_a_document(page, server):
    sign_in(page, server, ADMIN)
    page.get_by_label("Collection name").fill("users")
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_role("heading", name="users")).to_be_visible()
    page.get_by_role("button", name="New document").click()
    page.get_by_label("Id").fill("alice")
    page.get_by_label("JSON").fill('{"name": "Alice"}')
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="users/alice")).to_be_visible()
    expect(page.locator("#doc-meta")).to_contain_text("version 1")
    assert call(server, "GET", "/v1/collections/users/docs/alice")[1]["data"] == {"name": "Alice"}

    # Edit and save.
    page.locator("#doc-json").fill('{"name": "Alice", "team": "blue"}')
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#doc-message")).to_contain_text("Saved: version 2")
    assert call(server, "GET", "/v1/collections/users/docs/alice")[1]["data"] == {"name": "Alice", "team": "blue"}
    shot(page, "document")

    # Someone else writes meanwhile: the save is refused and explained,
    # and the edit is not lost.
    status, _ = call(server, "PUT", "/v1/collections/users/docs/alice", {"name": "Alice", "team": "red"})
    assert status == 200
    page.locator("#doc-json").fill('{"name": "Alice", "team": "green"}')
    page.get_by_role("button", name="Save").click()
    conflict = page.locator("#conflict")
    expect(conflict).to_be_visible()
    expect(conflict).to_contain_text("now version 3")
    expect(page.locator("#doc-json")).to_have_value('{"name": "Alice", "team": "green"}')
    shot(page, "conflict")
    assert call(server, "GET", "/v1/collections/users/docs/alice")[1]["data"]["team"] == "red"
    page.get_by_role("button", name="Overwrite with mine").click()
    expect(page.locator("#doc-message")).to_contain_text("Saved: version 4")
    assert call(server, "GET", "/v1/collections/users/docs/alice")[1]["data"]["team"] == "green"

    # The listing shows it; delete it from its page.
    page.get_by_role("link", name="← users").click()
    expect(page.get_by_role("button", name="alice")).to_be_visible()
    shot(page, "collection")
    page.get_by_role("button", name="alice").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="users")).to_be_visible()
    assert call(server, "GET", "/v1/collections/users/docs/alice")[0] == 404


def test_a_change_arrives_while_watching(page, server):
    call(server, "PUT", "/v1/collections/orders/docs/o-1", {"total": 1})
    sign_in(page, server, ADMIN)
    page.get_by_role("link", name="Changes").click()
    page.get_by_label("Collection to watch").select_option("orders")
    page.get_by_role("button", name="Watch").click()
    expect(page.locator("#watch-status")).to_contain_text("watching orders")
    # Give the long poll a moment to be waiting, then change from outside.
    time.sleep(0.5)
    call(server, "PUT", "/v1/collections/orders/docs/o-2", {"total": 2})
    call(server, "DELETE", "/v1/collections/orders/docs/o-1")
    changes = page.locator("#changes li")
    expect(changes).to_have_count(2, timeout=10000)
    expect(changes.nth(0)).to_contain_text("deleted")
    expect(changes.nth(0)).to_contain_text("orders/o-1")
    expect(changes.nth(1)).to_contain_text("written")
    expect(changes.nth(1)).to_contain_text("orders/o-2")
    shot(page, "changes")
    page.get_by_role("button", name="Stop").click()


def test_health_shows_the_shards_and_an_admin_takes_a_backup(page, server):
    call(server, "PUT", "/v1/collections/notes/docs/n1", {"text": "hello"})
    sign_in(page, server, ADMIN)
    page.get_by_role("link", name="Health").click()
    expect(page.locator("#ready-status")).to_have_text("ready")
    expect(page.locator("table tbody tr")).to_have_count(4)
    page.get_by_role("button", name="Take a backup").click()
    expect(page.locator("#backup-result")).to_contain_text("Backup complete", timeout=20000)
    shot(page, "health")


def test_a_read_key_is_not_offered_what_it_may_not_do(page, server):
    call(server, "PUT", "/v1/collections/users/docs/bob", {"name": "Bob"})
    sign_in(page, server, READER)
    expect(page.locator("#who")).to_contain_text("read key")
    page.get_by_role("button", name="users").click()
    expect(page.get_by_role("button", name="bob")).to_be_visible()
    expect(page.get_by_role("button", name="New document")).to_have_count(0)
    page.get_by_role("button", name="bob").click()
    expect(page.locator("#doc-json")).to_have_attribute("readonly", "")
    expect(page.get_by_role("button", name="Save")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete")).to_have_count(0)
    page.get_by_role("link", name="Health").click()
    expect(page.locator("#ready-status")).to_have_text("ready")
    expect(page.get_by_role("button", name="Take a backup")).to_have_count(0)


def test_usable_on_a_phone_and_by_keyboard(browser, server):
    call(server, "PUT", "/v1/collections/users/docs/carol", {"name": "Carol"})
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    sign_in(page, server, ADMIN)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 391, f"the page is wider than the phone: {width}px"
    shot(page, "phone-collections")
    # Tab to the first collection and open it with Enter.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.textContent") == "users":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="users")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 391
    shot(page, "phone-collection")
    context.close()


def test_swagger_ui_renders_under_its_content_security_policy(browser, server):
    """/docs carries a strict policy (its own inline scripts by hash, no
    framing); Swagger UI still draws every operation, and the browser
    reports no violation of it."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    blocked = []
    page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)
    response = page.goto(f"{server}/docs")
    policy = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy and "'unsafe-eval'" not in policy, policy
    assert response.headers.get("x-frame-options") == "DENY"
    expect(page.locator(".opblock").first).to_be_visible(timeout=15000)
    assert page.locator(".opblock").count() > 20
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "docs.png"))
    context.close()
    assert not blocked, f"the policy blocked part of Swagger UI: {blocked}"
