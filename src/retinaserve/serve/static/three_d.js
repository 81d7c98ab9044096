// retinaserve 3D view: POST the photo to /v1/jobs/reconstruct, follow the job's server-sent events, then show the
// textured mesh (GLB) in a three.js viewer beside its UV texture map, with GLB and OBJ downloads.
// app.js (a classic script, run before this module) provides the globals $, headers(), showError() and errorText(),
// and fires "retinaserve:photo" on document when a photo is chosen.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

const STAGES = ["queued", "detecting", "geometry", "texture", "exporting", "done"];
const TERMINAL = new Set(["done", "failed", "cancelled"]);
const BACKGROUND = 0x2a3138;
const MAX_RECONNECTS = 3;

let photo = null;  // the File chosen last
let job = null;  // {id, urls, controller} of the job on screen
let viewer = null;  // created on first use, when #viewer has a size
let uvUrl = null;

// Every SSE event the page received for the current job, in order: [{event, state}] (the browser test reads it).
window.retinaserve3d = { events: [] };

// --- the job: submit, follow its events, fetch its results ---------------------------------------------------------

async function reconstruct() {
  if (!photo) return;
  if (job) job.controller.abort();
  const controller = new AbortController();
  const signal = controller.signal;
  showError("");
  resetView();
  window.retinaserve3d = { events: [] };
  setStatus(`Uploading ${photo.name}…`);
  const body = new FormData();
  body.append("file", photo, photo.name);
  const response = await fetch("/v1/jobs/reconstruct", { method: "POST", body, headers: headers(), signal });
  if (!response.ok) throw new Error(await jobErrorText(response));
  const created = await response.json();
  job = { id: created.id, urls: created.urls, controller };
  window.retinaserve3d.id = created.id;
  showStage(created.state, 0);
  setStatus(`Job ${created.id} ${created.state}`);

  const last = await followEvents(job, signal);
  if (last.state !== "done") {
    const reason = last.error ? `${last.error.code}: ${last.error.message}` : `the job was ${last.state}`;
    throw new Error(`Reconstruction ${last.state}: ${reason}`);
  }
  const result = await fetchOk(`${job.urls.result}?format=json`, signal).then((r) => r.json());
  if (!result.faces.length) throw new Error("No face to reconstruct in this photo");
  fillFaceSelect(result.faces);
  $("download-glb").disabled = false;
  $("download-obj").disabled = false;
  const total = result.timings_ms && result.timings_ms.total;
  setStatus(`${result.faces.length} ${result.faces.length === 1 ? "face" : "faces"}, ${result.model}` +
    (total ? `, ${total.toFixed(0)} ms on the server` : ""));
  await showFace(0, signal);
}

async function followEvents(current, signal) {
  // EventSource cannot send X-API-Key, so the stream is read with fetch and parsed here. If it ends before a terminal
  // state (a proxy timeout), the job's state is fetched and the stream opened again after the last event seen.
  let last = { state: "queued" };
  let lastId = null;
  for (let attempt = 0; attempt <= MAX_RECONNECTS; attempt++) {
    const resume = lastId === null ? {} : { "Last-Event-ID": lastId };
    const response = await fetchOk(current.urls.events, signal, { Accept: "text/event-stream", ...resume });
    for await (const { event, data, id } of serverSentEvents(response.body)) {
      if (id !== null) lastId = id;
      const payload = JSON.parse(data);
      window.retinaserve3d.events.push({ event, state: payload.state });
      last = payload;
      showEvent(payload);
      if (TERMINAL.has(payload.state)) return payload;
    }
    last = await fetchOk(current.urls.self, signal).then((r) => r.json());
    if (TERMINAL.has(last.state)) return last;
  }
  throw new Error(`The event stream of job ${current.id} kept closing before the job ended (last state ${last.state})`);
}

async function* serverSentEvents(stream) {
  // Yields {event, data, id} per event of a text/event-stream body (WHATWG HTML, "server-sent events").
  // A caller that stops early (a terminal state) closes the connection.
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const held = buffer.endsWith("\r") ? "\r" : "";  // maybe the first half of a \r\n
      const lines = buffer.slice(0, buffer.length - held.length).split(/\r\n|\r|\n/);
      buffer = lines.pop() + held;  // an incomplete line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { event, data: data.join("\n"), id };
          event = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;  // a comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
        else if (field === "id") id = text;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

async function fetchOk(url, signal, extra) {
  const response = await fetch(url, { headers: { ...headers(), ...(extra || {}) }, signal });
  if (!response.ok) throw new Error(await jobErrorText(response));
  return response;
}

async function jobErrorText(response) {
  const text = await errorText(response);
  const retry = response.headers.get("Retry-After");
  return retry ? `${text} (retry in ${retry} s)` : text;
}

// --- what the page shows -------------------------------------------------------------------------------------------

function resetView() {
  const section = $("three-d");
  section.hidden = false;
  delete section.dataset.done;
  $("job-progress").value = 0;
  for (const li of $("job-stages").children) li.dataset.state = "pending";
  $("face-select").replaceChildren();
  $("face-select-label").hidden = true;
  $("download-glb").disabled = true;
  $("download-obj").disabled = true;
  $("uv-map").removeAttribute("src");
  if (viewer) viewer.clear();
}

function setStatus(text) {
  $("job-status").textContent = text;
}

function showStage(state, progress) {
  const index = STAGES.indexOf(state);
  if (index >= 0) {
    $("job-stages").querySelectorAll("li").forEach((li, i) => {
      li.dataset.state = i < index || state === "done" ? "passed" : i === index ? "active" : "pending";
    });
  }
  if (typeof progress === "number") $("job-progress").value = state === "done" ? 1 : progress;
}

function showEvent(data) {
  showStage(data.state, data.progress);
  const count = data.total ? ` ${data.done}/${data.total}` : "";
  const faces = data.faces == null ? "" : `, ${data.faces} ${data.faces === 1 ? "face" : "faces"}`;
  setStatus(`${data.state}${count}${faces}`);
}

function fillFaceSelect(faces) {
  const select = $("face-select");
  select.replaceChildren(...faces.map((face, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = `face ${i + 1} (score ${face.score.toFixed(2)}, yaw ${face.pose.yaw.toFixed(0)}°)`;
    return option;
  }));
  $("face-select-label").hidden = faces.length < 2;
}

async function showFace(face, signal) {
  delete $("three-d").dataset.done;
  const [glb, png] = await Promise.all([
    fetchOk(`${job.urls.result}?format=glb&face=${face}`, signal).then((r) => r.arrayBuffer()),
    fetchOk(`${job.urls.texture}?face=${face}`, signal).then((r) => r.blob()),
  ]);
  if (uvUrl) URL.revokeObjectURL(uvUrl);
  uvUrl = URL.createObjectURL(png);
  const image = $("uv-map");
  image.src = uvUrl;
  if (!viewer) viewer = createViewer($("viewer"));
  await Promise.all([viewer.show(glb), image.decode()]);
  $("three-d").dataset.done = "true";
}

async function download(format) {
  const face = Number($("face-select").value || 0);
  const response = await fetchOk(`${job.urls.result}?format=${format}&face=${face}`, job.controller.signal);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = format === "glb" ? `face${face}.glb` : `face${face}_obj.zip`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function fail(error) {
  if (error.name === "AbortError") return;  // a newer job or photo replaced this one
  showError(error.message || String(error));
  setStatus("");
  $("three-d").dataset.done = "failed";
}

// --- the three.js viewer -------------------------------------------------------------------------------------------

function createViewer(container) {
  // preserveDrawingBuffer keeps the last frame readable (screenshots, the browser test's pixel check)
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  renderer.setClearColor(BACKGROUND);
  container.replaceChildren(renderer.domElement);

  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(30, 1, 1, 10_000);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x6b5a4e, 1.6));
  const key = new THREE.DirectionalLight(0xffffff, 1.6);
  key.position.set(0.4, 0.6, 1);  // from above right of the camera, which carries it as it orbits
  camera.add(key);
  scene.add(camera);

  const controls = new OrbitControls(camera, renderer.domElement);
  const render = () => renderer.render(scene, camera);
  controls.addEventListener("change", render);

  const resize = () => {
    const width = container.clientWidth;
    const height = container.clientHeight;
    if (!width || !height) return;
    renderer.setSize(width, height, false);
    camera.aspect = width / height;
    camera.updateProjectionMatrix();
    render();
  };
  new ResizeObserver(resize).observe(container);

  let model = null;
  const clear = () => {
    if (!model) return;
    scene.remove(model);
    model.traverse((object) => {
      if (!object.isMesh) return;
      object.geometry.dispose();
      if (object.material.map) object.material.map.dispose();
      object.material.dispose();
    });
    model = null;
    render();
  };

  const show = async (glb) => {
    const gltf = await new GLTFLoader().parseAsync(glb, "");
    clear();
    model = gltf.scene;
    model.traverse((object) => {
      // the exports carry no normals (GLTFLoader would shade flat): smooth ones from the triangles
      if (object.isMesh && !object.geometry.attributes.normal) {
        object.geometry.computeVertexNormals();
        object.material.flatShading = false;
        object.material.needsUpdate = true;
      }
    });
    scene.add(model);
    resize();
    frame(model);
    render();
  };

  const frame = (object) => {
    // meshes are in image pixels (hundreds of units), centred, y up, facing +z: fit the box's front in view with a
    // margin; orbiting and zooming work around the bounding sphere's centre, whatever the mesh's size
    const box = new THREE.Box3().setFromObject(object);
    const size = box.getSize(new THREE.Vector3());
    const sphere = box.getBoundingSphere(new THREE.Sphere());
    const tanHalfFov = Math.tan(THREE.MathUtils.degToRad(camera.fov / 2));
    const fit = Math.max(size.y / 2 / tanHalfFov, size.x / 2 / (tanHalfFov * camera.aspect));
    const distance = 1.3 * fit + size.z / 2;
    camera.position.copy(sphere.center).add(new THREE.Vector3(0, 0, distance));
    camera.near = distance / 100;
    camera.far = distance * 100;
    camera.updateProjectionMatrix();
    controls.target.copy(sphere.center);
    controls.minDistance = sphere.radius * 0.5;
    controls.maxDistance = distance * 10;
    controls.update();
  };

  return { show, clear, renderer, camera, controls, render };
}

// --- wiring --------------------------------------------------------------------------------------------------------

document.addEventListener("retinaserve:photo", (e) => {
  photo = e.detail;
  $("reconstruct-button").disabled = false;
  if (job) job.controller.abort();
  job = null;
  $("three-d").hidden = true;
});
$("reconstruct-button").addEventListener("click", () => reconstruct().catch(fail));
$("face-select").addEventListener("change", () => showFace(Number($("face-select").value), job.controller.signal).catch(fail));
$("download-glb").addEventListener("click", () => download("glb").catch((e) => showError(String(e.message || e))));
$("download-obj").addEventListener("click", () => download("obj").catch((e) => showError(String(e.message || e))));
