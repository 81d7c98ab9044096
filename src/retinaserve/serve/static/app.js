// retinaserve web page: send the photo to /v1/detect, draw the JSON on a canvas; /v1/beautify for before/after.
"use strict";

const COLOURS = {
  left_eye: "rgb(255,64,64)", right_eye: "rgb(64,160,255)", nose: "rgb(255,220,0)",
  mouth_left: "rgb(255,64,255)", mouth_right: "rgb(0,230,230)",
};
const BOX = "rgb(40,220,60)";
const $ = (id) => document.getElementById(id);
let currentFile = null;
let currentBitmap = null;
let lastResult = null;

function headers() {
  const key = $("api-key").value.trim();
  localStorage.setItem("retinaserve-api-key", key);
  return key ? { "X-API-Key": key } : {};
}

function query(extra) {
  const params = new URLSearchParams(extra || {});
  if ($("threshold").value !== "") params.set("threshold", $("threshold").value);
  if ($("long-side").value !== "") params.set("long_side", $("long-side").value);
  return params.toString();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error.message}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function draw(bitmap, result, landmarks) {
  const canvas = $("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  // the server measures in original pixels after EXIF rotation; scale in case the browser's decode differs
  const sx = bitmap.width / result.image.width;
  const sy = bitmap.height / result.image.height;
  const line = Math.max(1, Math.round(Math.max(bitmap.width, bitmap.height) / 500));
  const fontSize = Math.max(10, 6 * line + 6);
  ctx.font = `${fontSize}px sans-serif`;
  ctx.textBaseline = "bottom";
  result.faces.forEach((face, index) => {
    const [x1, y1, x2, y2] = [face.box[0] * sx, face.box[1] * sy, face.box[2] * sx, face.box[3] * sy];
    ctx.lineWidth = line;
    ctx.strokeStyle = BOX;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `#${index + 1} ${face.score.toFixed(3)}`;  // the row number and score of the faces table
    const width = ctx.measureText(label).width + 2 * line;
    const height = fontSize + 2 * line;
    const top = y1 >= height ? y1 - height : y1;  // above the box, or inside it at the picture's top edge
    ctx.fillStyle = BOX;
    ctx.fillRect(x1, top, width, height);
    ctx.fillStyle = "#000";
    ctx.fillText(label, x1 + line, top + height - line);
    if (landmarks && face.landmarks) {
      const radius = Math.max(1.5, Math.min(x2 - x1, y2 - y1) / 40, line);
      for (const [name, point] of Object.entries(face.landmarks)) {
        ctx.fillStyle = COLOURS[name] || "#fff";
        ctx.beginPath();
        ctx.arc(point[0] * sx, point[1] * sy, radius, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  });
}

function fillTables(result) {
  const timings = $("timings").querySelector("tbody");
  timings.replaceChildren(...Object.entries(result.timings_ms).map(([stage, ms]) => row([stage, ms.toFixed(1)])));
  const faces = $("faces").querySelector("tbody");
  faces.replaceChildren(...result.faces.map((f, i) => row([i + 1, f.score.toFixed(3), f.box.map((v) => v.toFixed(0)).join(", ")])));
}

function plural(count, noun) {
  return `${count} ${count === 1 ? noun : `${noun}s`}`;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = String(cell);
    tr.appendChild(td);
  }
  return tr;
}

async function detect(file) {
  currentFile = file;
  document.dispatchEvent(new CustomEvent("retinaserve:photo", { detail: file }));  // three_d.js enables its button
  showError("");
  $("status").textContent = `Detecting faces in ${file.name}…`;
  $("beauty").hidden = true;
  $("beautify-button").disabled = true;
  const body = new FormData();
  body.append("file", file, file.name);
  const response = await fetch(`/v1/detect?${query({ landmarks: true })}`, { method: "POST", body, headers: headers() });
  if (!response.ok) {
    $("result").hidden = true;
    $("status").textContent = "";
    showError(await errorText(response));
    return;
  }
  const result = await response.json();
  lastResult = result;
  currentBitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  draw(currentBitmap, result, $("show-landmarks").checked);
  fillTables(result);
  $("face-count").textContent = String(result.faces.length);
  $("face-label").textContent = result.faces.length === 1 ? "face" : "faces";
  $("result").hidden = false;
  $("result").dataset.done = "true";
  $("status").textContent = `${result.image.width}×${result.image.height}, ${result.model}, ${result.timings_ms.total.toFixed(0)} ms on the server`;
  $("beautify-button").disabled = false;
}

async function beautify() {
  if (!currentFile) return;
  showError("");
  const strength = $("strength").value;
  $("status").textContent = "Beautifying…";
  const body = new FormData();
  body.append("file", currentFile, currentFile.name);
  const response = await fetch(`/v1/beautify?${query({ strength })}`, { method: "POST", body, headers: headers() });
  if (!response.ok) {
    showError(await errorText(response));
    $("status").textContent = "";
    return;
  }
  const blob = await response.blob();
  $("before").src = URL.createObjectURL(currentFile);
  $("after").src = URL.createObjectURL(blob);
  $("after-strength").textContent = Number(strength).toFixed(2);
  $("beauty").hidden = false;
  $("beauty").dataset.done = "true";
  $("status").textContent = `Beautified ${plural(Number(response.headers.get("X-Faces")), "face")}`;
}

function handleFiles(files) {
  if (files && files.length) detect(files[0]).catch((e) => showError(String(e)));
}

function setUp() {
  $("api-key").value = localStorage.getItem("retinaserve-api-key") || "";
  $("file-input").addEventListener("change", (e) => handleFiles(e.target.files));
  const zone = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.remove("dragging"); });
  }
  zone.addEventListener("drop", (e) => handleFiles(e.dataTransfer.files));
  $("show-landmarks").addEventListener("change", () => { if (currentBitmap && lastResult) draw(currentBitmap, lastResult, $("show-landmarks").checked); });
  $("strength").addEventListener("input", () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); });
  $("beautify-button").addEventListener("click", () => beautify().catch((e) => showError(String(e))));
  fetch("/readyz").then((r) => r.json()).then((body) => {
    $("model-name").textContent = body.model ? `model ${body.model}` : "model loading…";
    if (body.auth_required) document.querySelector("details").open = true;
  }).catch(() => { $("model-name").textContent = "server not reachable"; });
}

setUp();
