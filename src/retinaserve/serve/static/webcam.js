// retinaserve web page, Webcam view: camera frames go to /v1/stream over a WebSocket (protocol in
// serve/routers/stream.py) and the faces that come back are drawn over the live video. Also switches the view tabs.
// COLOURS, BOX and $ come from app.js, loaded first: the same colours as the photo view.
"use strict";

(() => {
  const LONG_SIDE = 640;      // frames are downscaled to this long side before they are sent
  const JPEG_QUALITY = 0.8;
  const MAX_IN_FLIGHT = 2;    // one running on the server while the next is on its way, hiding the network round trip
  const WINDOW = 30;          // round trips in the latency median
  const FPS_WINDOW_MS = 2000; // processed frames per second over this much time
  const CLOSE_REASONS = {
    1006: "the connection to the server was lost",
    1008: "the server needs an API key (enter it under API key, then start again)",
    1009: "a frame was too large for the server",
    1011: "the server failed (its log has the details)",
    1012: "the server is shutting down or restarting",
    1013: "the model is not loaded yet; try again in a moment",
  };

  let session = null;  // the running camera and socket, or null

  function setStatus(text) { $("webcam-status").textContent = text; }

  function showWebcamError(message) {
    $("webcam-error").textContent = message;
    $("webcam-error").hidden = !message;
  }

  function cameraError(error) {
    switch (error.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Camera permission denied: allow the camera for this page in the browser's site settings, then start again.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No camera found: connect one, then start again.";
      case "NotReadableError":
        return "The camera could not be started (is another application using it?).";
      default:
        return `Cannot open the camera: ${error.name}: ${error.message}`;
    }
  }

  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  function options() {
    const message = { type: "options", landmarks: true };
    const threshold = $("webcam-threshold").value;
    if (threshold !== "") message.threshold = Number(threshold);
    return message;
  }

  async function start() {
    showWebcamError("");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showWebcamError(window.isSecureContext
        ? "This browser gives no access to cameras."
        : "The camera needs a secure page: open this one over HTTPS or on localhost.");
      return;
    }
    $("webcam-button").disabled = true;
    setStatus("Asking for the camera…");
    let media;
    try {
      media = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } }, audio: false });
    } catch (error) {
      $("webcam-button").disabled = false;
      setStatus("");
      showWebcamError(cameraError(error));
      return;
    }
    const video = $("webcam-video");
    video.srcObject = media;
    try {
      await video.play();
    } catch (error) {
      media.getTracks().forEach((track) => track.stop());  // give the camera back
      video.srcObject = null;
      $("webcam-button").disabled = false;
      setStatus("");
      showWebcamError(`Cannot play the camera's video: ${error.message}`);
      return;
    }
    for (const id of ["webcam-faces", "webcam-latency", "webcam-server", "webcam-fps", "webcam-dropped"]) $(id).textContent = "–";
    delete $("webcam-view").dataset.frames;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/stream`);
    session = {
      media, socket, ready: false, encoding: false, freshFrame: true, nextId: 0, pausedUntil: 0,
      sentAt: new Map(), roundTrips: [], serverMs: [], answered: [], processed: 0,
      capture: document.createElement("canvas"),
    };
    const current = session;
    socket.addEventListener("open", () => {
      const key = $("api-key").value.trim();
      if (key) socket.send(JSON.stringify({ type: "auth", key }));  // first, when the server has keys
      socket.send(JSON.stringify(options()));
    });
    socket.addEventListener("message", (event) => { if (session === current) receive(JSON.parse(event.data)); });
    socket.addEventListener("close", (event) => {
      if (session !== current) return;  // stopped from the page
      const reason = CLOSE_REASONS[event.code] || `code ${event.code}${event.reason ? `: ${event.reason}` : ""}`;
      stop(`The server closed the connection: ${reason}.`);
    });
    if ("requestVideoFrameCallback" in video) {  // send only frames the camera has not sent before
      session.freshFrame = false;
      const tick = () => {
        if (session !== current) return;
        current.freshFrame = true;
        pump();
        video.requestVideoFrameCallback(tick);
      };
      video.requestVideoFrameCallback(tick);
    }
    $("webcam-button").textContent = "Stop camera";
    $("webcam-button").disabled = false;
    setStatus("Connecting to the server…");
  }

  function stop(error) {
    const ending = session;
    session = null;
    if (ending) {
      ending.media.getTracks().forEach((track) => track.stop());
      if (ending.socket.readyState <= WebSocket.OPEN) ending.socket.close(1000, "stopped");
    }
    $("webcam-video").srcObject = null;
    const overlay = $("webcam-overlay");
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    $("webcam-button").textContent = "Start camera";
    $("webcam-button").disabled = false;
    $("webcam-view").dataset.state = error ? "closed" : "stopped";
    showWebcamError(error || "");
    setStatus(ending ? `Stopped after ${ending.processed} frames.` : "");
  }

  function receive(message) {
    const s = session;
    const sentAt = s.sentAt.get(message.id);  // every frame gets one answer: result, dropped or error
    s.sentAt.delete(message.id);
    switch (message.type) {
      case "ready":
        s.ready = true;
        $("webcam-view").dataset.state = "streaming";
        setStatus(`Streaming to ${message.model}.`);
        break;
      case "result":
        showResult(s, message, sentAt);
        break;
      case "dropped":
        $("webcam-dropped").textContent = String(message.dropped);
        break;
      case "error":
        if (message.status === 429) s.pausedUntil = performance.now() + 1000 * (message.retry_after || 1);
        showWebcamError(`${message.status}: ${message.error.message}`);
        break;
    }
    pump();
  }

  function showResult(s, result, sentAt) {
    const now = performance.now();
    if (sentAt !== undefined) s.roundTrips = [...s.roundTrips, now - sentAt].slice(-WINDOW);
    s.serverMs = [...s.serverMs, result.timings_ms.total].slice(-WINDOW);
    s.answered = [...s.answered.filter((t) => now - t <= FPS_WINDOW_MS), now];
    s.processed += 1;
    const fps = s.answered.length > 1 ? (1000 * (s.answered.length - 1)) / (now - s.answered[0]) : 0;
    const latency = s.roundTrips.length ? median(s.roundTrips) : 0;
    $("webcam-faces").textContent = String(result.faces.length);
    $("webcam-latency").textContent = `${latency.toFixed(0)} ms`;
    $("webcam-server").textContent = `${median(s.serverMs).toFixed(0)} ms`;
    $("webcam-fps").textContent = `${fps.toFixed(1)} fps`;
    $("webcam-dropped").textContent = String(result.dropped);
    const view = $("webcam-view").dataset;
    Object.assign(view, { frames: s.processed, faces: result.faces.length, latencyMs: latency, fps, dropped: result.dropped });
    if ($("webcam-error").textContent.startsWith("429")) showWebcamError("");
    drawOverlay(result);
  }

  function drawOverlay(result) {
    const overlay = $("webcam-overlay");
    overlay.width = result.image.width;  // the sent frame's pixels (also clears the canvas)
    overlay.height = result.image.height;
    const ctx = overlay.getContext("2d");
    const line = Math.max(2, Math.round(Math.max(overlay.width, overlay.height) / 320));
    const fontSize = 5 * line + 6;
    ctx.font = `${fontSize}px sans-serif`;
    ctx.textBaseline = "bottom";
    for (const face of result.faces) {
      const [x1, y1, x2, y2] = face.box;
      ctx.lineWidth = line;
      ctx.strokeStyle = BOX;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const label = face.score.toFixed(2);
      const height = fontSize + line;
      const top = y1 >= height ? y1 - height : y1;
      ctx.fillStyle = BOX;
      ctx.fillRect(x1, top, ctx.measureText(label).width + 2 * line, height);
      ctx.fillStyle = "#000";
      ctx.fillText(label, x1 + line, top + height);
      if ($("webcam-landmarks").checked && face.landmarks) {
        const radius = Math.max(2, Math.min(x2 - x1, y2 - y1) / 30);
        for (const [name, point] of Object.entries(face.landmarks)) {
          ctx.fillStyle = COLOURS[name] || "#fff";
          ctx.beginPath();
          ctx.arc(point[0], point[1], radius, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    }
  }

  // Sends the camera's newest frame while fewer than MAX_IN_FLIGHT are unanswered: called on every answer and on
  // every new camera frame, so the client never floods the server and the server always has the next frame at hand.
  function pump() {
    const s = session;
    if (!s || !s.ready || s.encoding || !s.freshFrame || s.socket.readyState !== WebSocket.OPEN) return;
    if (s.sentAt.size >= MAX_IN_FLIGHT) return;
    const wait = s.pausedUntil - performance.now();
    if (wait > 0) {
      setTimeout(pump, wait);
      return;
    }
    const video = $("webcam-video");
    if (!video.videoWidth) return;
    const scale = Math.min(1, LONG_SIDE / Math.max(video.videoWidth, video.videoHeight));
    s.capture.width = Math.round(video.videoWidth * scale);
    s.capture.height = Math.round(video.videoHeight * scale);
    s.capture.getContext("2d").drawImage(video, 0, 0, s.capture.width, s.capture.height);
    s.encoding = true;
    s.freshFrame = !("requestVideoFrameCallback" in video);
    s.capture.toBlob((blob) => {
      s.encoding = false;
      if (session !== s || !blob || s.socket.readyState !== WebSocket.OPEN) return;
      s.nextId += 1;
      s.socket.send(JSON.stringify({ type: "frame", id: s.nextId }));
      s.socket.send(blob);
      s.sentAt.set(s.nextId, performance.now());
      pump();
    }, "image/jpeg", JPEG_QUALITY);
  }

  function showView(name) {
    for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
      const selected = tab.getAttribute("aria-controls") === name;
      tab.setAttribute("aria-selected", String(selected));
      $(tab.getAttribute("aria-controls")).hidden = !selected;
    }
    if (name !== "webcam-view" && session) stop();  // leaving the view gives the camera back
  }

  function setUp() {
    for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
      tab.addEventListener("click", () => showView(tab.getAttribute("aria-controls")));
    }
    $("webcam-button").addEventListener("click", () => {
      if (session) stop();
      else start().catch((error) => { stop(String(error)); });
    });
    $("webcam-threshold").addEventListener("change", () => {
      if (session && session.socket.readyState === WebSocket.OPEN) session.socket.send(JSON.stringify(options()));
    });
  }

  setUp();
})();
