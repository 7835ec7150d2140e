"""
Title: Call the ferkit service from another program
Description: Send photos to a running `ferkit serve`, run a video job and follow its
    progress, and stream a video's frames over the live socket, with the standard
    library's HTTP client and the `websockets` package.
Install: a server with `pip install -e '.[serve]'`; this client needs only Python for
    photos and videos, and `websockets` and `opencv-python` for the live socket.
Run: ferkit serve &   then   python examples/serve_client.py [PHOTO ...] [--video FILE]
    [--url http://localhost:8000] [--api-key KEY]

Without photos it sends the two sample photos that ship inside ferkit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "ferkit" / "assets" / "samples"


def parse_args() -> argparse.Namespace:
    # The header's Description field, all its lines (up to Install:), as one paragraph.
    description = " ".join(__doc__.split("Description:")[1].split("\nInstall:")[0].split())
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("photos", nargs="*", help="photo files (default: ferkit's samples)")
    parser.add_argument("--video", help="a video to send as a job and over the live socket")
    parser.add_argument("--url", default="http://localhost:8000", help="the server")
    parser.add_argument("--api-key", help="the server's key, if it has one")
    parser.add_argument("--frames", type=int, default=30, help="video frames to stream")
    return parser.parse_args()


def call(url: str, key: str | None, body: bytes | None = None, content_type: str = "") -> dict:
    """One request; the JSON answer, or exit with the server's error message."""
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    if key:
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        message = json.loads(error.read() or b"{}").get("error", error.reason)
        sys.exit(f"{url}: {error.code} {message}")
    except urllib.error.URLError as error:
        sys.exit(f"{url}: no server answers ({error.reason}); start one with: ferkit serve")


def multipart(path: Path, field: str = "file") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def main() -> None:
    args = parse_args()
    health = call(f"{args.url}/healthz", None)
    print(f"server: model {health['model']['name']} ({', '.join(health['model']['classes'])})")

    # Step 1: photos, one request each. Every face has a box, a label and probabilities.
    photos = [Path(p) for p in args.photos] or sorted(SAMPLES.glob("*.jpg"))
    for photo in photos:
        result = call(f"{args.url}/v1/predict", args.api_key, *multipart(photo))
        found = ", ".join(
            f"{face['label']} ({face['probabilities'][face['label']]:.0%})"
            for face in result["faces"]
        )
        print(f"{photo.name}: {len(result['faces'])} face(s) {found}".rstrip())

    if not args.video:
        return
    video = Path(args.video)

    # Step 2: a video job. The server answers 202 at once; its status says how far it is.
    job = call(f"{args.url}/v1/videos", args.api_key, *multipart(video))
    status_url = args.url + job["status_url"]
    while job["status"] in ("queued", "running"):
        time.sleep(0.5)
        job = call(status_url, args.api_key)
        print(f"  {job['status']}: {job['progress']['frames_done']} frames", end="\r")
    if job["status"] == "failed":
        sys.exit(f"{video.name}: the job failed: {job['error']}")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in job["result"]["share_of_time"].items())
    print(f"{video.name}: {job['result']['frames_read']} frames; time per emotion: {shares}")

    # Step 3: the live socket. Each frame sent gets one answer (faces, or dropped).
    print(f"{video.name} over the live socket:", asyncio.run(stream(args, video)))


async def stream(args: argparse.Namespace, video: Path) -> str:
    import cv2
    from websockets.asyncio.client import connect

    url = args.url.replace("http", "ws", 1) + "/v1/stream"
    if args.api_key:
        url += f"?api_key={args.api_key}"
    capture = cv2.VideoCapture(str(video))
    labels = []
    async with connect(url) as socket:
        for _ in range(args.frames):
            ok, frame = capture.read()
            if not ok:
                break
            await socket.send(cv2.imencode(".jpg", frame)[1].tobytes())
            answer = json.loads(await socket.recv())  # waiting for each: nothing dropped
            if answer["type"] == "faces" and answer["faces"]:
                labels.append(answer["faces"][0]["label"])
            await asyncio.sleep(1 / 30)
    capture.release()
    return f"{len(labels)} frames with a face, labels {sorted(set(labels))}"


if __name__ == "__main__":
    main()
