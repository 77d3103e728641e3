"""/docs works on an offline device: Swagger UI's files come from the service itself, and a real headless
browser renders the API from them."""

import os
import re
import shutil
import subprocess

import httpx
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def _referenced_urls(html: str) -> list[str]:
    """What the docs page loads: stylesheet, favicon, script and the OpenAPI document."""
    return re.findall(r'(?:href|src)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)


def _browser_or_skip() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser installed")


def test_docs_page_loads_everything_from_the_service(start, serve_models):
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0, "--api-key-env", "MY_KEY",
                  env={"MY_KEY": "secret"})
    html = httpx.get(f"{cloud.url}/docs").text
    outside = [u for u in re.findall(r"https?://[^\s\"'<>)]+", html) if not u.startswith(cloud.url)]
    assert outside == []
    urls = _referenced_urls(html)
    assert {os.path.splitext(u)[1] for u in urls} == set(CONTENT_TYPES), urls
    for url in urls:  # no API key sent: the docs are public, like /openapi.json
        response = httpx.get(f"{cloud.url}{url}")
        assert response.status_code == 200, url
        assert CONTENT_TYPES[os.path.splitext(url)[1]] in response.headers["content-type"], url
    assert httpx.get(f"{cloud.url}/redoc").status_code == 404  # ReDoc would need a CDN: off


def test_no_browser_skips(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="no headless browser"):
        _browser_or_skip()


def test_docs_render_in_a_headless_browser(request, start, tmp_path):
    browser = _browser_or_skip()  # before the models are built: a skip costs nothing
    cloud = start("serve-cloud", request.getfixturevalue("serve_models")["cloud"], "--port", 0)
    args = [browser, "--headless", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path}",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            # Anything but loopback goes to a closed proxy port and no host name resolves: the test
            # cannot reach the internet, so a page that still needed a CDN would render empty.
            "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000", "--dump-dom", f"{cloud.url}/docs"]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout
    assert 'class="swagger-ui"' in dom, dom[:2000]
    assert 'data-path="/v1/classify"' in dom and 'data-path="/healthz"' in dom
