// ferkit's web page: photos, a video and a live camera, over the service's own API.
// Plain JavaScript, no build step; every request goes to this page's own server.
"use strict";

// One colour per expression, as in ferkit's annotated images.
const COLORS = {
  angry: "rgb(220,50,47)", contempt: "rgb(133,153,0)", disgust: "rgb(108,113,196)",
  fear: "rgb(211,54,130)", happy: "rgb(255,200,0)", neutral: "rgb(190,150,100)",
  sad: "rgb(38,139,210)", surprise: "rgb(42,161,152)",
};
const UNCERTAIN_MARGIN = 0.10; // top two probabilities closer than this: too close to call
const CAMERA_WIDTH = 640; // frames sent over the socket are at most this wide
const CAMERA_IN_FLIGHT = 2; // frames sent and not yet answered
const TOP_BLENDSHAPES = 8; // blendshapes shown as bars for a selected face
const BLENDSHAPE_COLOR = "rgb(37,99,235)";
const MESH_COLOR = "rgba(120,255,200,0.85)";

const $ = (id) => document.getElementById(id);
let health = null;

function colorOf(label) { return COLORS[label] || "rgb(160,160,160)"; }

function ranked(probabilities) {
  return Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
}

function isUncertain(face) {
  const top = ranked(face.probabilities);
  return top.length > 1 && top[0][1] - top[1][1] < UNCERTAIN_MARGIN;
}

function faceTitle(face) {
  const top = ranked(face.probabilities);
  if (isUncertain(face)) {
    return `${top[0][0]} or ${top[1][0]}?`;
  }
  return `${face.label} ${Math.round(face.probabilities[face.label] * 100)}%`;
}

function apiKey() { return $("api-key").value.trim(); }

// The chosen model as a query string ("" for the served one).
function modelQuery(prefix = "?") {
  const chosen = $("model-select").value;
  return chosen ? `${prefix}model=${encodeURIComponent(chosen)}` : "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

// The message of an error response ({"error": "..."}), or a plain description.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showStatus(target, message, kind) {
  target.textContent = message;
  target.className = `status ${kind || ""}`;
}

// ---- tabs -------------------------------------------------------------------------

function selectPanel(name) {
  for (const tab of document.querySelectorAll(".tab")) {
    const active = tab.dataset.panel === name;
    tab.classList.toggle("active", active);
    tab.setAttribute("aria-selected", String(active));
  }
  for (const panel of document.querySelectorAll(".panel")) {
    panel.hidden = panel.id !== name;
  }
}

// ---- drawing faces ----------------------------------------------------------------

// Boxes and labels over an image drawn at `scale` on a canvas.
function drawFaces(context, faces, scale) {
  const fontSize = Math.max(13, Math.round(context.canvas.width / 45));
  context.font = `600 ${fontSize}px system-ui, sans-serif`;
  context.textBaseline = "top";
  faces.forEach((face, index) => {
    const [x, y, w, h] = face.box.map((v) => v * scale);
    // A face too close to call keeps its top expression's colour, with a dashed box.
    const color = colorOf(face.label);
    const lineWidth = Math.max(2, Math.round(context.canvas.width / 300));
    context.lineWidth = lineWidth;
    context.strokeStyle = color;
    context.setLineDash(isUncertain(face) ? [4 * lineWidth, 3 * lineWidth] : []);
    context.strokeRect(x, y, w, h);
    context.setLineDash([]);
    const title = `${face.track_id !== undefined ? "" : `#${index + 1} `}${faceTitle(face)}`;
    const width = context.measureText(title).width + 10;
    const top = y - fontSize - 8 >= 0 ? y - fontSize - 8 : y + h;
    context.fillStyle = color;
    context.fillRect(x, top, width, fontSize + 8);
    context.fillStyle = "#111";
    context.fillText(title, x + 5, top + 4);
  });
}

// One expression's bar: its name, a bar of its colour as long as `share`, the figure.
function barRow(name, share, digits, className = "bar-row") {
  const row = element("div", className);
  row.dataset.label = name;
  row.append(element("span", "bar-name", name));
  const track = element("span", "bar-track");
  const fill = element("span", "bar-fill");
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  fill.style.background = colorOf(name);
  track.append(fill);
  row.append(track, element("span", "bar-value", `${(share * 100).toFixed(digits)}%`));
  return row;
}

// ---- face geometry ------------------------------------------------------------------

// A face's strongest blendshapes (the model's own "_neutral" left out), highest first.
function topBlendshapes(face, count = TOP_BLENDSHAPES) {
  return Object.entries(face.blendshapes || {})
    .filter(([name]) => !name.startsWith("_"))
    .sort((a, b) => b[1] - a[1])
    .slice(0, count);
}

// Head pose in words: yaw > 0 turns the face towards the image's right (the subject's
// own left), pitch > 0 raises the chin, roll > 0 turns it counter-clockwise.
function poseText(pose) {
  const turn = Math.abs(pose.yaw) < 5 ? "facing the camera" : `turned to their ${pose.yaw > 0 ? "left" : "right"}`;
  const tilt = Math.abs(pose.pitch) < 5 ? "" : `, chin ${pose.pitch > 0 ? "up" : "down"}`;
  return `yaw ${pose.yaw.toFixed(1)}°, pitch ${pose.pitch.toFixed(1)}°, roll ${pose.roll.toFixed(1)}° (${turn}${tilt})`;
}

// The selected face's geometry: its head pose, and its top blendshapes as bars.
function geometryPanel(face, title) {
  const panel = element("div", "geometry-panel");
  panel.append(element("h4", "geometry-title", title));
  const pose = element("p", "head-pose", `Head pose: ${poseText(face.head_pose)}`);
  pose.dataset.yaw = face.head_pose.yaw;
  panel.append(pose);
  const list = element("div", "bars blendshape-bars");
  for (const [name, score] of topBlendshapes(face)) {
    const row = element("div", "bar-row blendshape-row");
    row.dataset.name = name;
    row.append(element("span", "bar-name", name));
    const track = element("span", "bar-track");
    const fill = element("span", "bar-fill");
    fill.style.width = `${(score * 100).toFixed(1)}%`;
    fill.style.background = BLENDSHAPE_COLOR;
    track.append(fill);
    row.append(track, element("span", "bar-value", score.toFixed(2)));
    list.append(row);
  }
  panel.append(list);
  panel.append(element("p", "muted", "Blendshapes: MediaPipe's scores in [0, 1] of how far each part of the face moves (eyes, brows, mouth, jaw); close to, but not, FACS action units."));
  return panel;
}

// A face's 478 mesh landmarks as dots, at `scale`.
function drawMesh(context, face, scale, color = MESH_COLOR) {
  if (!face.mesh) return;
  const radius = Math.max(0.8, Math.min(2, (face.box[2] * scale) / 160));
  context.fillStyle = color;
  context.beginPath();
  for (const [x, y] of face.mesh) {
    context.moveTo(x * scale + radius, y * scale);
    context.arc(x * scale, y * scale, radius, 0, 2 * Math.PI);
  }
  context.fill();
}

// A face's probabilities as bars, likeliest first.
function probabilityBars(face) {
  const list = element("div", "bars");
  for (const [name, p] of ranked(face.probabilities)) list.append(barRow(name, p, 1));
  return list;
}

// ---- photos -----------------------------------------------------------------------

function photoCard(file) {
  const card = element("article", "card photo-card");
  card.append(element("h3", "card-title", file.name));
  const body = element("div", "card-body");
  const status = element("p", "status", "Finding faces…");
  card.append(status, body);
  $("photo-results").append(card);
  return { card, body, status };
}

async function predictPhoto(file) {
  const { card, body, status } = photoCard(file);
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    // Every face's geometry too: the page shows it for the face selected in the table.
    response = await fetch(`/v1/predict?geometry=1${modelQuery("&")}`, { method: "POST", body: form, headers: authHeaders() });
  } catch (error) {
    showStatus(status, `The server could not be reached (${error.message}).`, "error");
    card.classList.add("failed");
    return;
  }
  if (!response.ok) {
    showStatus(status, await errorMessage(response), "error");
    card.classList.add("failed");
    return;
  }
  const result = await response.json();
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch (_) {
    // The server read it, the browser cannot (TIFF, say): show the results without it.
  }
  const canvas = element("canvas", "photo-canvas");
  // Draws the photo, its faces, and the selected face's mesh (index, or -1 for none).
  let redraw = () => {};
  if (image.naturalWidth) {
    const scale = Math.min(1, 900 / image.naturalWidth);
    // The server applied the EXIF orientation; so does the browser when drawing.
    const fit = image.naturalWidth === result.width ? 1 : image.naturalWidth / result.width;
    canvas.width = Math.round(image.naturalWidth * scale);
    canvas.height = Math.round(image.naturalHeight * scale);
    const context = canvas.getContext("2d");
    redraw = (selected) => {
      context.drawImage(image, 0, 0, canvas.width, canvas.height);
      if (selected >= 0) drawMesh(context, result.faces[selected], scale * fit);
      drawFaces(context, result.faces, scale * fit);
    };
    redraw(-1);
    body.append(canvas);
  }
  if (result.faces.length === 0) {
    URL.revokeObjectURL(url);
    showStatus(status, "No face found in this photo.", "no-face");
    return;
  }
  const count = result.faces.length;
  showStatus(status, `${count} face${count > 1 ? "s" : ""} found.`, "ok");
  const table = facesTable(result.faces);
  const detail = element("div", "face-detail");
  body.append(table, detail);
  const select = (index) => {
    table.querySelectorAll(".face-row").forEach((row, i) => {
      row.classList.toggle("selected", i === index);
      row.setAttribute("aria-selected", String(i === index));
    });
    const face = result.faces[index];
    detail.replaceChildren();
    if (face.blendshapes) detail.append(geometryPanel(face, `Face #${index + 1}: its geometry`));
    redraw(index);
  };
  table.querySelectorAll(".face-row").forEach((row, index) => {
    row.tabIndex = 0;
    row.addEventListener("click", () => select(index));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); select(index); } });
  });
  select(0);
  URL.revokeObjectURL(url);
}

function facesTable(faces) {
  const table = element("table", "faces-table");
  const head = element("tr");
  for (const title of ["#", "expression", "probabilities", "box (x, y, w, h)"]) {
    head.append(element("th", "", title));
  }
  table.append(head);
  faces.forEach((face, index) => {
    const row = element("tr", "face-row");
    row.append(element("td", "", String(index + 1)));
    const label = element("td", "face-label", faceTitle(face));
    label.dataset.label = face.label;
    row.append(label);
    const bars = element("td");
    bars.append(probabilityBars(face));
    row.append(bars, element("td", "box", face.box.join(", ")));
    table.append(row);
  });
  return table;
}

function handlePhotos(files) {
  for (const file of files) predictPhoto(file);
}

// ---- video ------------------------------------------------------------------------

function setProgress(bar, label, fraction) {
  const percent = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  bar.style.width = `${percent}%`;
  label.textContent = `${percent}%`;
}

function uploadVideo(file) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    const geometry = $("video-geometry").checked ? "?geometry=1" : "";
    request.open("POST", `/v1/videos${geometry}${modelQuery(geometry ? "&" : "?")}`);
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) setProgress($("upload-bar"), $("upload-percent"), event.loaded / event.total);
    };
    request.onload = () => {
      let body = null;
      try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
      if (request.status === 202 && body) resolve(body);
      else reject(new Error((body && body.error) || `the server answered ${request.status}`));
    };
    request.onerror = () => reject(new Error("the upload failed: the server could not be reached"));
    const form = new FormData();
    form.append("file", file, file.name);
    request.send(form);
  });
}

let videoRun = 0; // the latest video picked; an older one's loop stops when it changes

async function processVideo(file) {
  const run = ++videoRun;
  const status = $("video-status");
  $("video-result").hidden = true;
  $("video-progress").hidden = false;
  setProgress($("upload-bar"), $("upload-percent"), 0);
  setProgress($("process-bar"), $("process-percent"), 0);
  showStatus(status, `Uploading ${file.name}…`);
  let job;
  try {
    job = await uploadVideo(file);
  } catch (error) {
    $("video-progress").hidden = true;
    showStatus(status, error.message, "error");
    return;
  }
  setProgress($("upload-bar"), $("upload-percent"), 1);
  showStatus(status, `Processing ${file.name}…`);
  let failures = 0;
  for (;;) {
    await new Promise((done) => setTimeout(done, 500));
    if (run !== videoRun) return; // another video was picked
    let response;
    try {
      response = await fetch(job.status_url, { headers: authHeaders() });
    } catch (error) {
      response = null;
      if (++failures >= 10) {
        showStatus(status, `Lost the server while processing (${error.message}).`, "error");
        return;
      }
      continue;
    }
    if (response.status === 503 || response.status === 429) {
      const wait = Number(response.headers.get("Retry-After") || 1);
      await new Promise((done) => setTimeout(done, wait * 1000));
      continue;
    }
    if (!response.ok) {
      showStatus(status, await errorMessage(response), "error");
      return;
    }
    failures = 0;
    const state = await response.json();
    if (state.progress && state.progress.fraction !== null) {
      setProgress($("process-bar"), $("process-percent"), state.progress.fraction);
    }
    if (state.status === "failed") {
      showStatus(status, `The video could not be processed: ${state.error}`, "error");
      return;
    }
    if (state.status === "done") {
      if (run === videoRun) await showVideoResult(job, state);
      return;
    }
  }
}

async function showVideoResult(job, state) {
  const result = state.result;
  const seconds = (!state.note && state.video.duration_s) || result.frames_read / state.video.fps;
  const faceFrames = result.frames_with_face;
  showStatus(
    $("video-status"),
    `${state.filename}: ${result.frames_read} frames (${seconds.toFixed(1)} s), a face on ` +
    `${faceFrames}, ${result.tracks} track${result.tracks === 1 ? "" : "s"}.` +
    (state.note ? ` Only part of the video was read: ${state.note}.` : ""),
    state.note ? "error" : result.tracks ? "ok" : "no-face",
  );
  $("video-result").hidden = false;
  drawTimeline($("video-chart"), result);
  drawActivity($("activity-chart"), result);
  drawShares($("video-shares"), result.share_of_time);
  const player = $("video-player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.removeAttribute("src");
  let response;
  try {
    response = await fetch(job.annotated_url, { headers: authHeaders() });
  } catch (error) {
    response = null;
  }
  if (response && response.ok) {
    player.src = URL.createObjectURL(await response.blob());
  } else {
    const reason = response ? await errorMessage(response) : "the server could not be reached";
    showStatus($("video-status"), `The annotated video could not be loaded: ${reason}.`, "error");
  }
}

// Each expression's smoothed probability over time, for the video's main face (the
// track seen on most frames).
function drawTimeline(canvas, result) {
  const counts = {};
  for (const frame of result.frames) for (const face of frame.faces) counts[face.track_id] = (counts[face.track_id] || 0) + 1;
  const main = Object.keys(counts).sort((a, b) => counts[b] - counts[a])[0];
  const points = [];
  for (const frame of result.frames) {
    const face = frame.faces.find((f) => String(f.track_id) === main);
    if (face) points.push([frame.time_s, face.probabilities]);
  }
  const width = canvas.clientWidth || canvas.width;
  canvas.width = width * (window.devicePixelRatio || 1);
  canvas.height = Math.round(canvas.width * 0.36);
  const context = canvas.getContext("2d");
  const ratio = canvas.width / width;
  context.scale(ratio, ratio);
  const w = width;
  const h = canvas.height / ratio;
  const left = 40;
  const bottom = 24;
  context.clearRect(0, 0, w, h);
  context.font = "12px system-ui, sans-serif";
  context.fillStyle = "#666";
  context.strokeStyle = "#ddd";
  for (const level of [0, 0.5, 1]) {
    const y = (h - bottom) * (1 - level) + 4;
    context.beginPath();
    context.moveTo(left, y);
    context.lineTo(w, y);
    context.stroke();
    context.fillText(`${level * 100}%`, 4, Math.max(12, y + 4));
  }
  const end = points.length ? points[points.length - 1][0] || 1 : 1;
  context.fillText("0 s", left, h - 14);
  context.fillText(`${end.toFixed(1)} s`, w - 40, h - 14);
  const legend = $("chart-legend");
  legend.textContent = "";
  for (const name of result.classes) {
    context.strokeStyle = colorOf(name);
    context.lineWidth = 2;
    context.beginPath();
    points.forEach(([time, probabilities], index) => {
      const x = left + (w - left - 8) * (time / end);
      const y = (h - bottom) * (1 - probabilities[name]) + 4;
      if (index === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
    const key = element("span", "legend-item", name);
    key.style.setProperty("--swatch", colorOf(name));
    legend.append(key);
  }
  if (!points.length) {
    context.fillStyle = "#333";
    context.fillText("No face was found in this video.", left + 10, h / 2);
  }
}

// The main face's smile intensity and head turn (yaw) over time, its blinks as ticks and
// its head turns as shaded spans, under the expressions chart (videos sent with
// geometry).
function drawActivity(canvas, result) {
  const section = $("activity-section");
  const tracks = result.geometry_per_track || {};
  const counts = {};
  for (const frame of result.frames) for (const face of frame.faces) counts[face.track_id] = (counts[face.track_id] || 0) + 1;
  const main = Object.keys(counts).sort((a, b) => counts[b] - counts[a])[0];
  const activity = tracks[main];
  section.hidden = !activity;
  if (!activity) return;
  const points = [];
  for (const frame of result.frames) {
    const face = frame.faces.find((f) => String(f.track_id) === main);
    if (face && face.blendshapes) {
      const smile = (face.blendshapes.mouthSmileLeft + face.blendshapes.mouthSmileRight) / 2;
      points.push([frame.time_s, smile, face.head_pose.yaw]);
    }
  }
  const width = canvas.clientWidth || canvas.width;
  canvas.width = width * (window.devicePixelRatio || 1);
  canvas.height = Math.round(canvas.width * 0.28);
  const context = canvas.getContext("2d");
  const ratio = canvas.width / width;
  context.scale(ratio, ratio);
  const h = canvas.height / ratio;
  const left = 40;
  const bottom = 24;
  const end = points.length ? points[points.length - 1][0] || 1 : 1;
  const xOf = (time) => left + (width - left - 8) * (time / end);
  const yOf = (level) => (h - bottom) * (1 - level) + 4;
  context.clearRect(0, 0, width, h);
  context.font = "12px system-ui, sans-serif";
  for (const turn of activity.head_turns) { // shaded: the head turned away
    context.fillStyle = "rgba(108,113,196,0.18)";
    context.fillRect(xOf(turn.start_s), 4, xOf(turn.end_s) - xOf(turn.start_s), h - bottom);
  }
  context.strokeStyle = "#ddd";
  context.fillStyle = "#666";
  for (const level of [0, 0.5, 1]) {
    context.beginPath();
    context.moveTo(left, yOf(level));
    context.lineTo(width, yOf(level));
    context.stroke();
    context.fillText(String(level), 4, Math.max(12, yOf(level) + 4)); // smile
    const yaw = `${level === 0.5 ? "" : level > 0.5 ? "+" : "−"}${Math.abs(level - 0.5) * 90}°`;
    context.fillText(yaw, width - 34, Math.max(12, yOf(level) + (level === 1 ? 12 : -4))); // yaw
  }
  context.fillText("0 s", left, h - 14);
  context.fillText(`${end.toFixed(1)} s`, width - 80, h - 14);
  const line = (color, valueOf, dash) => {
    context.strokeStyle = color;
    context.lineWidth = 2;
    context.setLineDash(dash);
    context.beginPath();
    points.forEach((point, index) => {
      const x = xOf(point[0]);
      const y = yOf(valueOf(point));
      if (index === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
    context.setLineDash([]);
  };
  line("rgb(255,170,0)", (p) => p[1], []); // smile intensity, 0 to 1
  line("rgb(108,113,196)", (p) => 0.5 + Math.max(-45, Math.min(45, p[2])) / 90, [5, 3]); // yaw, ±45°
  context.strokeStyle = "rgb(38,139,210)"; // blinks: a tick at each
  context.lineWidth = 2;
  for (const time of activity.blink_times_s) {
    context.beginPath();
    context.moveTo(xOf(time), h - bottom + 4);
    context.lineTo(xOf(time), h - bottom - 14);
    context.stroke();
  }
  const turns = activity.head_turns.length;
  const summary = $("activity-summary");
  summary.textContent =
    `Face ${main}: ${activity.blinks} blink${activity.blinks === 1 ? "" : "s"}` +
    (activity.blink_rate_per_min === null ? "" : ` (${activity.blink_rate_per_min} a minute)`) +
    `; smile intensity ${activity.smile_mean.toFixed(2)} on average, smiling ${Math.round(activity.smile_share * 100)}% of the time; ` +
    `${turns} head turn${turns === 1 ? "" : "s"}` +
    (turns ? ` (${activity.head_turns.map((t) => `${t.direction} at ${t.start_s.toFixed(1)} s`).join(", ")})` : "") + ".";
  summary.dataset.blinks = activity.blinks;
}

function drawShares(target, shares) {
  target.textContent = "";
  const entries = Object.entries(shares).sort((a, b) => b[1] - a[1]);
  if (!entries.length) target.append(element("p", "muted", "No face was found."));
  for (const [name, share] of entries) target.append(barRow(name, share, 0, "bar-row share-row"));
}

// ---- camera -----------------------------------------------------------------------

const camera = {
  stream: null, socket: null, inFlight: 0, answers: [], labels: new Set(), timer: null,
  lastSent: 0, pending: null, starting: false,
};

async function startCamera() {
  const status = $("camera-status");
  if (camera.starting || camera.stream) return; // one session at a time
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showStatus(status, "This browser cannot use a camera here (it needs https or localhost).", "error");
    return;
  }
  camera.starting = true;
  $("camera-start").disabled = true;
  try {
    camera.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
    const video = $("camera-video");
    video.srcObject = camera.stream;
    await video.play();
  } catch (error) {
    stopCamera();
    showStatus(status, `The camera could not be opened: ${error.message}. Allow the camera for this page and try again.`, "error");
    return;
  } finally {
    camera.starting = false;
    $("camera-start").disabled = false;
  }
  $("camera-view").hidden = false;
  $("camera-start").hidden = true;
  $("camera-stop").hidden = false;
  camera.labels = new Set();
  camera.answers = [];
  openSocket();
  camera.timer = setInterval(showRate, 500);
}

// The live socket; with the mesh on, its faces carry their geometry (?geometry=1).
function openSocket() {
  const status = $("camera-status");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const key = apiKey();
  const options = [];
  if (key) options.push(`api_key=${encodeURIComponent(key)}`);
  if ($("camera-mesh").checked) options.push("geometry=1");
  const query = (options.length ? `?${options.join("&")}` : "") + modelQuery(options.length ? "&" : "?");
  const socket = new WebSocket(`${scheme}://${location.host}/v1/stream${query}`);
  socket.binaryType = "arraybuffer";
  camera.socket = socket;
  socket.onopen = () => { showStatus(status, "Live: expressions are read as fast as the server can.", "ok"); sendFrames(); };
  socket.onmessage = (event) => { if (camera.socket === socket) onCameraAnswer(JSON.parse(event.data)); };
  socket.onclose = (event) => {
    if (camera.socket === socket) {
      const reason = event.reason || (event.code === 1009 ? "a frame was too large" : event.code === 1006 ? "the server could not be reached" : "");
      showStatus(status, `The live connection closed${reason ? `: ${reason}` : ""}.`, event.code === 1000 ? "" : "error");
      stopCamera(false);
    }
  };
  socket.onerror = () => showStatus(status, "The live connection to the server failed.", "error");
}

// The mesh checkbox: a live session reconnects, asking for geometry or not.
function toggleMesh() {
  if (!camera.socket) return;
  const old = camera.socket;
  camera.socket = null;
  old.close(1000);
  camera.inFlight = 0;
  if (camera.pending) clearTimeout(camera.pending);
  camera.pending = null;
  openSocket();
}

// Keeps CAMERA_IN_FLIGHT frames on their way, no faster than the server's frame-rate
// limit (frames beyond it would only be dropped).
function sendFrames() {
  const socket = camera.socket;
  const video = $("camera-video");
  if (!socket || socket.readyState !== WebSocket.OPEN || camera.pending) return;
  const maxFps = (health && health.limits && health.limits.ws_max_fps) || 30;
  const wait = camera.lastSent + 1000 / maxFps - performance.now();
  if (wait > 0 && camera.inFlight < CAMERA_IN_FLIGHT) {
    camera.pending = setTimeout(() => { camera.pending = null; sendFrames(); }, wait);
    return;
  }
  if (camera.inFlight < CAMERA_IN_FLIGHT && video.videoWidth) {
    camera.lastSent = performance.now();
    const scale = Math.min(1, CAMERA_WIDTH / video.videoWidth);
    const frame = document.createElement("canvas");
    frame.width = Math.round(video.videoWidth * scale);
    frame.height = Math.round(video.videoHeight * scale);
    frame.getContext("2d").drawImage(video, 0, 0, frame.width, frame.height);
    camera.inFlight += 1;
    frame.toBlob((blob) => {
      if (blob && socket.readyState === WebSocket.OPEN) {
        socket.send(blob);
      } else {
        camera.inFlight -= 1;
        setTimeout(sendFrames, 50);
      }
    }, "image/jpeg", 0.8);
    if (camera.inFlight < CAMERA_IN_FLIGHT) sendFrames();
  }
  if (!video.videoWidth) setTimeout(sendFrames, 50);
}

// Every frame sent gets one answer: its faces, an error, or word that it was dropped.
function onCameraAnswer(answer) {
  camera.inFlight = Math.max(0, camera.inFlight - 1);
  if (answer.type === "error") {
    showStatus($("camera-status"), answer.error, "error");
  } else if (answer.type === "faces") {
    const status = $("camera-status");
    if (status.classList.contains("error")) showStatus(status, "Live: expressions are read as fast as the server can.", "ok");
    camera.answers.push({ time: performance.now(), dropped: answer.dropped });
    drawCameraFaces(answer);
  }
  sendFrames();
}

function drawCameraFaces(answer) {
  const video = $("camera-video");
  const overlay = $("camera-overlay");
  overlay.width = video.clientWidth;
  overlay.height = video.clientHeight;
  const context = overlay.getContext("2d");
  context.clearRect(0, 0, overlay.width, overlay.height);
  const scale = overlay.width / answer.width;
  if ($("camera-mesh").checked) for (const face of answer.faces) drawMesh(context, face, scale);
  drawFaces(context, answer.faces, scale);
  const list = $("camera-faces");
  list.textContent = "";
  for (const face of answer.faces) {
    camera.labels.add(face.label);
    const item = element("div", "live-face");
    item.dataset.track = face.track_id;
    item.dataset.label = face.label;
    item.append(element("strong", "face-label", `face ${face.track_id}: ${faceTitle(face)}`));
    item.append(probabilityBars(face));
    if (face.blendshapes) item.append(geometryPanel(face, "Geometry"));
    list.append(item);
  }
  list.dataset.labelsSeen = [...camera.labels].sort().join(",");
  if (!answer.faces.length) list.append(element("p", "muted no-face", "No face in view."));
}

function showRate() {
  const now = performance.now();
  camera.answers = camera.answers.filter((answer) => now - answer.time <= 2000);
  const rate = camera.answers.length / 2;
  const dropped = camera.answers.length ? camera.answers[camera.answers.length - 1].dropped : 0;
  $("camera-fps").textContent = `${rate.toFixed(1)} frames/s from the server · ${dropped} dropped`;
  $("camera-fps").dataset.fps = rate.toFixed(2);
}

function stopCamera(closeSocket = true) {
  if (camera.timer) clearInterval(camera.timer);
  if (camera.pending) clearTimeout(camera.pending);
  camera.timer = null;
  camera.pending = null;
  const socket = camera.socket;
  camera.socket = null;
  camera.inFlight = 0;
  if (closeSocket && socket) socket.close(1000);
  if (camera.stream) for (const track of camera.stream.getTracks()) track.stop();
  camera.stream = null;
  $("camera-start").hidden = false;
  $("camera-stop").hidden = true;
}

// ---- start ------------------------------------------------------------------------

async function loadHealth() {
  const info = $("model-info");
  try {
    const response = await fetch("/healthz");
    health = await response.json();
  } catch (error) {
    showStatus(info, "The server could not be reached.", "error");
    return;
  }
  const model = health.model;
  info.textContent = `Model “${model.name}” (${model.classes.join(", ")}), checksums ${model.checksums}; detector ${health.detector}.`;
  const select = $("model-select");
  const others = Object.entries(health.models || {}).filter(([name]) => name !== model.name);
  const describe = (name, classes) => `${name}: ${classes.length} expressions`;
  select.replaceChildren(new Option(describe(model.name, model.classes), ""));
  for (const [name, entry] of others) select.append(new Option(describe(name, entry.classes), name));
  $("model-row").hidden = others.length === 0;
  select.addEventListener("change", () => {
    const chosen = select.value ? health.models[select.value] : model;
    info.textContent = `Model “${select.value || model.name}” (${chosen.classes.join(", ")}); detector ${health.detector}.`;
  });
  $("key-row").hidden = !health.api_key_required;
  if (health.api_key_required) {
    $("api-key").value = sessionStorage.getItem("ferkit-api-key") || "";
  }
}

function start() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => selectPanel(tab.dataset.panel));
  }
  $("api-key").addEventListener("change", () => sessionStorage.setItem("ferkit-api-key", apiKey()));
  $("key-row").addEventListener("submit", (event) => event.preventDefault());
  $("photo-input").addEventListener("change", (event) => { handlePhotos(event.target.files); event.target.value = ""; });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    handlePhotos(event.dataTransfer.files);
  });
  $("video-input").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) processVideo(file);
    event.target.value = "";
  });
  $("camera-start").addEventListener("click", startCamera);
  $("camera-stop").addEventListener("click", () => { stopCamera(); showStatus($("camera-status"), "Stopped."); });
  $("camera-mesh").addEventListener("change", toggleMesh);
  loadHealth();
}

document.addEventListener("DOMContentLoaded", start);
