"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright,
against ``ferkit serve`` started on a free loopback port. Photos, a video and the camera
(Chromium's fake camera fed with frames of the real woman2.mp4).

Screenshots of every state go to ``results/test-screenshots/`` (or
``$FERKIT_SCREENSHOTS``), and the camera's frame rate to ``camera.json`` beside them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

from ferkit.serve.loadtest import free_port, running_server  # noqa: E402
from tests.conftest import require_shared  # noqa: E402

pytestmark = [pytest.mark.real_data, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("FERKIT_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(
    os.environ.get(
        "FERKIT_SCREENSHOTS", Path(__file__).resolve().parents[1] / "results" / "test-screenshots"
    )
)


def chromium_or_skip() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} not found in CI; .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not found; apt-get install chromium")
    return CHROMIUM


@pytest.fixture(scope="module")
def samples() -> Path:
    return require_shared("samples")


@pytest.fixture(scope="module")
def fake_camera(samples, tmp_path_factory) -> Path:
    """woman2.mp4 as a Y4M file, the format Chromium's fake camera plays (in a loop)."""
    import cv2

    path = tmp_path_factory.mktemp("camera") / "woman2.y4m"
    capture = cv2.VideoCapture(str(samples / "woman2.mp4"))
    width, height = (
        int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{width} H{height} F30000:1001 Ip A1:1 C420jpeg\n".encode())
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            handle.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    capture.release()
    return path


@pytest.fixture(scope="module")
def server():
    port = free_port()
    with running_server(port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser(fake_camera):
    executable = chromium_or_skip()
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable),
            args=[
                "--no-sandbox",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={fake_camera}",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    """A fresh page at the web app; its script errors fail the test."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.grant_permissions(["camera"], origin=server)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    # Script errors, not the browser's log of error responses (which some tests provoke).
    tab.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    tab.goto(server + "/")
    tab.locator("#model-info", has_text="checksums verified").wait_for()
    yield tab
    context.close()
    assert errors == [], errors


def shoot(tab, name: str) -> None:
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_photo_with_a_smile_shows_one_happy_face(page, samples):
    page.set_input_files("#photo-input", str(samples / "justin.jpg"))
    card = page.locator(".photo-card").first
    card.locator(".status.ok").wait_for()
    assert card.locator(".status").inner_text() == "1 face found."
    labels = card.locator(".face-label")
    assert labels.count() == 1 and labels.first.get_attribute("data-label") == "happy"
    assert card.locator("canvas.photo-canvas").is_visible()
    assert card.locator(".bar-row:not(.blendshape-row)").count() == 7
    shoot(page, "photo-happy")


def test_model_picker_switches_to_the_eight_class_ferplus_model(page, samples):
    picker = page.locator("#model-select")
    assert page.locator("#model-row").is_visible()
    assert picker.locator("option").all_inner_texts() == [
        "default: 7 expressions",
        "fast: 7 expressions",
        "ferplus: 8 expressions",
    ]
    picker.select_option("ferplus")
    assert "contempt" in page.locator("#model-info").inner_text()
    page.set_input_files("#photo-input", str(samples / "justin.jpg"))
    card = page.locator(".photo-card").first
    card.locator(".status.ok").wait_for()
    assert card.locator(".bar-row:not(.blendshape-row)").count() == 8  # contempt included
    assert card.locator(".face-label").first.get_attribute("data-label") == "happy"
    shoot(page, "photo-ferplus")


def test_a_selected_face_shows_its_blendshapes_and_head_pose(page, samples):
    """The page asks for every face's geometry; the face selected in the table (the first,
    until another row is clicked) shows its top blendshapes as bars and its head pose,
    and its mesh is drawn on the photo."""
    page.set_input_files("#photo-input", str(samples / "justin.jpg"))
    card = page.locator(".photo-card").first
    card.locator(".geometry-panel").wait_for()
    rows = card.locator(".blendshape-row")
    assert rows.count() == 8
    names = [rows.nth(i).get_attribute("data-name") for i in range(3)]
    assert set(names[:2]) == {"mouthSmileRight", "mouthSmileLeft"}  # the smile, as muscles
    assert abs(float(card.locator(".head-pose").get_attribute("data-yaw"))) < 10
    assert "facing the camera" in card.locator(".head-pose").inner_text()
    shoot(page, "photo-geometry")

    page.locator("#photo-results").evaluate("r => r.replaceChildren()")
    page.set_input_files("#photo-input", str(samples / "couple.jpg"))
    card = page.locator(".photo-card").first
    card.locator(".geometry-panel").wait_for()
    assert card.locator(".face-row.selected").count() == 1
    assert card.locator(".geometry-title").inner_text().startswith("Face #1")
    first_yaw = card.locator(".head-pose").get_attribute("data-yaw")
    before = card.locator("canvas.photo-canvas").screenshot()
    card.locator(".face-row").nth(1).click()
    assert card.locator(".geometry-title").inner_text().startswith("Face #2")
    assert card.locator(".face-row").nth(1).get_attribute("aria-selected") == "true"
    assert card.locator(".head-pose").get_attribute("data-yaw") != first_yaw
    assert card.locator("canvas.photo-canvas").screenshot() != before  # the mesh moved
    shoot(page, "photo-geometry-second-face")


def test_photo_without_a_face_says_so(page, samples):
    page.set_input_files("#photo-input", str(samples / "no-faces.jpg"))
    status = page.locator(".photo-card .status.no-face")
    status.wait_for()
    assert "No face" in status.inner_text()
    shoot(page, "photo-no-face")


def test_text_file_named_jpg_shows_the_servers_error(page, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("these are notes, not a photo\n" * 20)
    page.set_input_files("#photo-input", str(fake))
    status = page.locator(".photo-card .status.error")
    status.wait_for()
    assert "holiday.jpg" in status.inner_text() and "not an image" in status.inner_text()
    shoot(page, "photo-error")


def test_several_photos_at_phone_width(page, samples):
    page.set_viewport_size({"width": 390, "height": 844})
    page.set_input_files("#photo-input", [str(samples / "couple.jpg"), str(samples / "justin.jpg")])
    page.locator(".photo-card .status.ok").nth(1).wait_for()
    assert page.locator(".photo-card").nth(0).locator(".face-row").count() == 2
    overflow = page.locator("body").evaluate("b => b.scrollWidth - window.innerWidth")
    assert overflow <= 0  # nothing wider than the phone's screen
    for index in range(2):  # and nothing cut off inside a card: every figure is in view
        inside = (
            page.locator(".photo-card")
            .nth(index)
            .evaluate(
                "card => [...card.querySelectorAll('.bar-value, .face-label')].every("
                "e => e.getBoundingClientRect().right <= card.getBoundingClientRect().right + 0.5)"
            )
        )
        assert inside
    shoot(page, "photos-phone")


def test_video_upload_progress_annotated_video_and_the_six_blinks_of_woman2(page, samples):
    """One upload of woman2.mp4 (464 frames at 29.97 frames/s, 596 pixels wide): the
    progress of the upload and of the job, the shares, the annotated video playing in the
    page, and the activity chart (the geometry box is ticked by default) marking her six
    blinks and no head turn."""
    page.click("button[data-panel=video]")
    page.set_input_files("#video-input", str(samples / "woman2.mp4"))
    page.locator("#video-progress").wait_for()
    page.locator("#video-result").wait_for(timeout=180_000)
    assert page.locator("#upload-percent").inner_text() == "100%"
    assert page.locator("#process-percent").inner_text() == "100%"
    assert "464 frames" in page.locator("#video-status").inner_text()
    shares = page.locator("#video-shares .share-row")
    assert shares.count() >= 1
    player = page.locator("#video-player")
    page.wait_for_timeout(500)
    state = player.evaluate(
        "v => new Promise(r => { v.currentTime = 2; v.onseeked = () => r([v.readyState, v.duration, v.videoWidth]); })"
    )
    assert state[0] >= 2 and abs(state[1] - 464 / 29.97) < 0.2 and state[2] == 596
    shoot(page, "video")
    assert page.locator("#activity-section").is_visible()
    summary = page.locator("#activity-summary")
    text = summary.inner_text()
    assert "blink" in text and "smile intensity" in text and "head turn" in text
    assert summary.get_attribute("data-blinks") == "6", text
    assert "0 head turns" in text
    page.locator("#activity-chart").scroll_into_view_if_needed()
    shoot(page, "video-blinks")


def test_camera_shows_a_tracked_face_with_changing_labels(page):
    page.click("button[data-panel=camera]")
    page.click("#camera-start")
    page.locator(".live-face").first.wait_for(timeout=30_000)
    # woman2.mp4 smiles, then speaks; within 8 s the label of her one face changes. The
    # frame rate counts the answers of the last 2 s, so at least that long is waited.
    for waited in range(0, 8_000, 250):
        seen = page.locator("#camera-faces").get_attribute("data-labels-seen").split(",")
        if len(seen) >= 2 and waited >= 2_500:
            break
        page.wait_for_timeout(250)
    faces = page.locator(".live-face")
    assert faces.count() == 1 and faces.first.get_attribute("data-track") == "1"
    seen = page.locator("#camera-faces").get_attribute("data-labels-seen").split(",")
    fps = float(page.locator("#camera-fps").get_attribute("data-fps"))
    shoot(page, "camera")
    (SCREENSHOTS / "camera.json").write_text(json.dumps({"frames_per_s": fps, "labels_seen": seen}))
    print(f"camera: {fps:.1f} frames/s answered by the server; labels seen: {seen}")
    assert len(seen) >= 2
    assert fps >= 3
    page.click("#camera-stop")
    assert page.locator("#camera-start").is_visible()


def test_camera_overlays_the_mesh_when_asked(page):
    page.click("button[data-panel=camera]")
    page.check("#camera-mesh")
    page.click("#camera-start")
    page.locator(".live-face .geometry-panel").first.wait_for(timeout=30_000)
    page.wait_for_timeout(3_000)
    face = page.locator(".live-face").first
    assert face.locator(".blendshape-row").count() == 8
    assert "yaw" in face.locator(".head-pose").inner_text()
    # The overlay holds the mesh's dots: many pixels of its colour inside the face's box.
    dots = page.locator("#camera-overlay").evaluate(
        """canvas => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let count = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] < 160 && data[i + 1] > 200 && data[i + 2] > 150 && data[i + 3] > 100) count++;
            }
            return count;
        }"""
    )
    fps = float(page.locator("#camera-fps").get_attribute("data-fps"))
    shoot(page, "camera-mesh")
    print(f"camera with the mesh: {fps:.1f} frames/s answered; {dots} mesh pixels")
    assert dots > 300
    assert fps >= 2
    page.uncheck("#camera-mesh")  # reconnects without geometry: the panel goes
    page.locator(".live-face").first.wait_for()
    for _ in range(150):  # the page's CSP allows no evaluated strings: poll from here
        if page.locator(".live-face .geometry-panel").count() == 0:
            break
        page.wait_for_timeout(100)
    assert page.locator(".live-face .geometry-panel").count() == 0
    page.click("#camera-stop")
