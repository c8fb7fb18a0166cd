"""`cerebro ui` right after `cerebro demo`, used as a person uses it, in headless Chromium:
the Prefect UI lists the deployments, starts the pipeline through its run form with one changed
parameter and shows the run completing, and shows the reindex deployment's cron schedule and its
event trigger; the MLflow UI opens the experiment on its training runs, the pipeline's parent run
with the nested stage and adapt-iteration runs, a metric chart, the confusion-matrix image, and
cerebro-search with its champion alias on the registered-models page."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from selenium.common.exceptions import (ElementClickInterceptedException, StaleElementReferenceException,
                                        TimeoutException)
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from helpers import REPO, chromium


OVERRIDE = "index.video_frame_interval=2.0"  # only index reruns: the other stages come from the cache


@pytest.fixture(scope="module")
def ui(demo_run):
    """`cerebro ui` on the demo's state dir, on ports the kernel picks; stopped by SIGINT (Ctrl-C).
    The MLflow test runs first: it reads the demo's own runs, before the Prefect test adds one."""
    p = subprocess.Popen([str(demo_run["bin"] / "cerebro"), "ui", "--prefect-port", "0", "--mlflow-port", "0"],
                         env=demo_run["env"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops all" in line:
            break
    out = "".join(lines)
    assert "Ctrl-C stops all" in out, out[-3000:]
    prefect = re.search(r"Prefect UI\s+(http://127\.0\.0\.1:\d+)/", out)[1]
    mlflow = re.search(r"MLflow UI\s+((http://127\.0\.0\.1:\d+)/#/experiments/(\d+)\S*)", out)
    stack = psutil.Process(p.pid).children(recursive=True)  # the servers, the worker and theirs
    try:
        yield {"prefect": prefect, "mlflow_url": mlflow[1], "mlflow": mlflow[2], "experiment": mlflow[3], "out": out}
    finally:
        p.send_signal(signal.SIGINT)
        rest = p.communicate(timeout=60)[0]
        assert p.returncode == 0 and "stopping" in rest, rest[-2000:]
        gone, alive = psutil.wait_procs(stack, timeout=20)
        assert len(stack) >= 3 and not alive, alive  # Ctrl-C stopped everything it started


def _wait(driver, condition, timeout: float, what: str):
    """WebDriverWait, failing with what the page showed instead of an empty TimeoutException."""
    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{what} not found on {driver.current_url} within {timeout:.0f} s; the page shows:\n"
                             f"{body[:2500]}") from None


def _wait_text(driver, text: str, timeout: float = 30) -> None:
    _wait(driver, EC.presence_of_element_located((By.XPATH, f"//*[contains(normalize-space(.), {text!r})]")),
          timeout, repr(text))


def _click(driver, xpath: str, timeout: float = 30):
    """Click as a person does: once the element is there and nothing (a toast sliding in, a dialog
    fading out) covers it."""
    deadline = time.monotonic() + timeout
    while True:
        el = _wait(driver, EC.element_to_be_clickable((By.XPATH, xpath)), max(1.0, deadline - time.monotonic()), xpath)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        try:
            el.click()
            return el
        except (ElementClickInterceptedException, StaleElementReferenceException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


SCHEDULED = "//*[contains(@class, 'toast')][contains(normalize-space(.), 'scheduled to start')]"
OOPS = "//*[contains(normalize-space(text()), 'Oops. Something went wrong.')]"


def _submit(driver, ui) -> str:
    """Submit the run form; the new run's name, from the toast '<run> scheduled to start now'.
    Prefect's server on SQLite can answer a write with a 500 ('database is locked',
    PrefectHQ/prefect#10188) when one of its services writes at the same moment; its UI then shows
    'Oops. Something went wrong.' and a person submits again. That is allowed once, for that cause
    only (read in the server's log), and only when no run was created."""
    log = Path(re.search(r"logs in (\S+); Ctrl-C", ui["out"])[1]) / "prefect-server.log"
    for attempt in (1, 2):
        before = len(driver.find_elements(By.XPATH, OOPS))  # an error toast of an earlier request stays up
        _click(driver, "//button[normalize-space()='Submit']")
        shown = _wait(driver, lambda drv: drv.find_elements(By.XPATH, SCHEDULED) or (
            drv.find_elements(By.XPATH, OOPS)[before:]), 30, "the toast '<run> scheduled to start now' (or Prefect's error toast)")
        if "scheduled to start" in shown[0].text:
            return shown[0].text.split(" scheduled")[0].strip()
        text = log.read_text(errors="replace")
        assert attempt == 1 and "database is locked" in text, f"Prefect's server failed the run form:\n{text[-4000:]}"
        page = driver.current_url.split("/run?")[0]  # the deployment's page
        made = [r for r in httpx.post(ui["prefect"] + "/api/flow_runs/filter", json={"deployments": {"id": {
            "any_": [page.rstrip("/").rsplit("/", 1)[1]]}}}).json()
                if (r["parameters"].get("params") or {}).get("overrides") == [OVERRIDE]]
        if made:  # the error came from another request: the run was created
            driver.get(page)
            return made[0]["name"]
        for close in driver.find_elements(By.XPATH, "//button[normalize-space()='Close']"):
            if close.is_displayed():
                close.click()
        time.sleep(2)
    raise AssertionError("unreachable")


def _expand(driver, run_name: str) -> None:
    """Click the expander in the run-name cell of ``run_name``'s row (its child runs appear)."""
    link = WebDriverWait(driver, 60).until(EC.presence_of_element_located(
        (By.XPATH, f"//a[normalize-space()={run_name!r}]")))
    row = link.find_element(By.XPATH, "./ancestor::*[@role='row'][1]")
    row.find_element(By.XPATH, ".//*[@role='gridcell'][.//a[normalize-space()=" + repr(run_name) + "]]//button").click()


def test_mlflow_ui_shows_runs_metrics_images_and_the_champion(ui, demo_run):
    import mlflow

    base, exp = ui["mlflow"], ui["experiment"]
    uri = f"sqlite:///{demo_run['home'] / 'mlflow.db'}"
    # the iterations the demo's adapt ran (up to 3: it stops early when validation falls)
    ran = sorted(int(r.data.tags["iteration"]) for r in mlflow.MlflowClient(tracking_uri=uri).search_runs(
        [exp], "tags.stage = 'adapt-iteration'"))
    assert ran and ran == list(range(1, len(ran) + 1)), ran
    with chromium() as d:
        d.set_window_size(1600, 1400)
        d.get(ui["mlflow_url"])  # as printed by `cerebro ui`: the experiment's training runs
        _wait_text(d, "pipeline demo", 90)
        _expand(d, "pipeline demo")
        for child in ("download", "pretrain", "adapt", "index"):
            WebDriverWait(d, 30).until(EC.presence_of_element_located((By.XPATH, f"//a[normalize-space()={child!r}]")))
        _wait_text(d, "shards demo", 30)  # the Dataset column: what pretraining read (mlflow.log_input)
        _expand(d, "adapt")
        for it in ran:
            WebDriverWait(d, 30).until(EC.presence_of_element_located(
                (By.XPATH, f"//a[normalize-space()='iteration {it}']")))
        _click(d, "//a[normalize-space()='iteration 1']")
        _click(d, "//*[@role='tab' or self::a or self::button or self::span][normalize-space()='Model metrics']")
        WebDriverWait(d, 60).until(lambda drv: [e for e in drv.find_elements(
            By.CSS_SELECTOR, ".js-plotly-plot, canvas, svg.main-svg") if e.is_displayed()])
        _wait_text(d, "(train/loss)", 30)  # the student's loss curve
        _click(d, "//*[@role='tab' or self::a or self::button or self::span][normalize-space()='Artifacts']")
        _click(d, "//*[normalize-space(text())='confusion_val_1.png']", 60)
        WebDriverWait(d, 60).until(lambda drv: [i for i in drv.find_elements(By.TAG_NAME, "img") if i.is_displayed()
                                                and int(i.get_attribute("naturalWidth") or 0) > 100])
        d.get(f"{base}/#/models")
        _wait_text(d, "cerebro-search", 60)
        # MLflow offers its new registry UI (aliases, tags) in a dialog on the first visit: take it
        for button in d.find_elements(By.XPATH, "//*[contains(@class, 'modal')]//button[normalize-space()='Try it now']"):
            button.click()
        _click(d, "//a[normalize-space()='cerebro-search']", 60)
        _wait_text(d, "champion", 60)
    assert exp


def test_prefect_ui_runs_the_pipeline_from_its_run_form(ui):
    api = ui["prefect"] + "/api"
    with chromium() as d:
        d.set_window_size(1400, 1400)
        d.get(ui["prefect"] + "/deployments")
        _click(d, "//a[normalize-space()='pipeline']")
        _click(d, "//button[contains(normalize-space(), 'Run')]")
        _click(d, "//*[self::a or self::button][normalize-space()='Custom run']")
        _wait_text(d, "Overrides")
        _click(d, "//button[contains(normalize-space(), 'Add item')]")
        box = _wait(d, lambda drv: [e for e in drv.find_elements(
            By.XPATH, "//*[starts-with(normalize-space(text()), 'Overrides')]/following::textarea") if e.is_displayed()],
            20, "the new override's text box")
        box[0].send_keys(OVERRIDE, Keys.TAB)
        name = _submit(d, ui)
        _click(d, f"//a[normalize-space()={name!r}]")  # the new run, listed on the deployment's page
        _wait(d, lambda drv: "/runs/flow-run/" in drv.current_url, 30, "the flow run's page")
        run_id = d.current_url.rstrip("/").split("/runs/flow-run/")[1].split("?")[0]
        deadline = time.monotonic() + 900
        state = ""
        while time.monotonic() < deadline:
            state = httpx.get(f"{api}/flow_runs/{run_id}").json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(3)
        assert state == "COMPLETED", state
        d.refresh()
        _wait_text(d, "Completed", 60)  # what the person sees on the run's page
        run = httpx.get(f"{api}/flow_runs/{run_id}").json()
        assert run["parameters"]["params"]["overrides"] == [OVERRIDE]  # the form sent the changed parameter

        d.get(ui["prefect"] + "/deployments")
        _click(d, "//a[normalize-space()='reindex']")
        _wait_text(d, "Schedules")
        page = d.find_element(By.TAG_NAME, "body").text
        assert re.search(r"03:00|0 3 \* \* \*", page), page[:2000]  # the daily cron schedule
        _click(d, "//*[normalize-space()='Triggers']/following::a[contains(normalize-space(), 'reindex__automation')][1]")
        for text in ("A custom trigger", "Run deployment", "reindex"):  # the trigger's automation
            _wait_text(d, text, 60)
        d.get(d.current_url.rstrip("/") + "/edit")  # its form: the event it waits for
        _wait_text(d, "cerebro.scrape.landed", 60)
    automation = httpx.post(f"{api}/automations/filter", json={}).json()
    (trigger,) = [a["trigger"] for a in automation if a["name"].startswith("reindex")]
    assert trigger["expect"] == ["cerebro.scrape.landed"] and trigger["match"] == {"prefect.resource.id": "cerebro.scrape.*"}
    # the scheduler works on this stack: the cron schedule has created its upcoming runs
    (dep,) = [x for x in httpx.post(f"{api}/deployments/filter", json={}).json() if x["name"] == "reindex"]
    upcoming = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                                                          "deployments": {"id": {"any_": [dep["id"]]}}}).json()
    assert upcoming and all(r["expected_start_time"].endswith("03:00:00Z") or "T03:00:00" in r["expected_start_time"]
                            for r in upcoming)
