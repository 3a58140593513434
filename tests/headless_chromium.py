"""Debian's chromium under Selenium, headless and offline, for the dashboard's browser tests.

No browser is downloaded at run time: the test uses ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(``apt-get install chromium chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "install Debian's browser: apt-get install chromium chromium-driver"


def chromium(profile: Path, *extra_args: str, width: int = 1400, height: int = 1500):  # -> selenium WebDriver
    """A headless Chromium with a fresh profile in ``profile``, nothing phoning home, as root too."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing; {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
                "--disable-dev-shm-usage", "--no-default-browser-check", "--metrics-recording-only",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", *extra_args):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
