// The browser page of the streaming video service: one WebSocket to /ws (docs/protocol.md),
// two tabs. Generate: prompt -> frames on a canvas. Watch: camera, file or toy world -> captions.
// Plain JS, no build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

// el("li", {className: "x", testid: "y"}, "text", child): a new element; text stays text
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "testid") node.dataset.testid = value;
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

// -- binary frames: a 32-byte little-endian header, then the payload ---------------------------
const HEADER_BYTES = 32;
const KIND_VIDEO = 1;
const KIND_INPUT = 2;
const FORMAT_JPEG = 1;
const FORMAT_NAMES = { 1: "jpeg", 2: "png", 3: "raw", 4: "h264" };
const MAX_INPUT_PIXELS = 768 * 28 * 28; // the VLM's own budget per frame

function packFrame(session, index, timestamp, width, height, payload) {
  const buffer = new ArrayBuffer(HEADER_BYTES + payload.byteLength);
  const view = new DataView(buffer);
  view.setUint8(0, 0x53); // "S"
  view.setUint8(1, 0x56); // "V"
  view.setUint8(2, 1); // version
  view.setUint8(3, KIND_INPUT);
  view.setUint32(4, session, true);
  view.setBigUint64(8, BigInt(index), true);
  view.setFloat64(16, timestamp, true);
  view.setUint8(24, FORMAT_JPEG); // bytes 25..27 stay zero
  view.setUint16(28, width, true);
  view.setUint16(30, height, true);
  new Uint8Array(buffer, HEADER_BYTES).set(new Uint8Array(payload));
  return buffer;
}

function unpackFrame(buffer) {
  if (buffer.byteLength < HEADER_BYTES) return null;
  const view = new DataView(buffer);
  if (view.getUint8(0) !== 0x53 || view.getUint8(1) !== 0x56 || view.getUint8(2) !== 1) return null;
  return {
    kind: view.getUint8(3),
    session: view.getUint32(4, true),
    index: Number(view.getBigUint64(8, true)),
    timestamp: view.getFloat64(16, true),
    format: view.getUint8(24),
    width: view.getUint16(28, true),
    height: view.getUint16(30, true),
    payload: new Uint8Array(buffer, HEADER_BYTES),
  };
}

// -- errors: every server code gets a sentence a person can act on ------------------------------
const ERROR_TEXT = {
  bad_json: "the page sent a message the server could not read (a bug in this page)",
  unknown_type: "the server does not know a message this page sent (version mismatch?)",
  invalid_message: "the server refused the request: a field is missing or out of range",
  message_too_large: "a message was larger than the server accepts",
  unsupported_version: "the server speaks a different protocol version than this page",
  unauthorized: "the token is missing or wrong: enter the server's token and press Connect",
  not_ready: "the connection was not ready yet; try again in a moment",
  unknown_session: "that session has already ended on the server",
  unknown_pipeline: "the server does not run that pipeline",
  too_many_sessions: "too many sessions are running (on this connection or the server); stop one first",
  cache_full: "the server's memory for sessions is full, try again later",
  compute_full: "the server cannot make this session in real time now; choose a smaller size or try again later",
  rate_limited: "the page sent messages too fast; some were dropped",
  bad_frame: "a video frame could not be decoded by the server",
  frame_too_large: "the frame size is larger than the server allows; choose a smaller size",
  wrong_direction: "this session does not take that kind of message",
  timestamps_backwards: "a video frame was older than the previous one",
  recording_failed: "the server could not write the recording; the video goes on without it",
  internal: "the session failed on the server and has ended",
  engine_lost: "the server's engine running the session stopped; start the session again",
  server_shutdown: "the server is shutting down; it will reconnect when it is back",
};

function showError(code, detail) {
  const human = ERROR_TEXT[code] || "the server reported an error";
  const text = el("p", {},
    el("strong", { testid: "error-message" }, human[0].toUpperCase() + human.slice(1) + "."), " ",
    el("code", { testid: "error-code" }, code));
  if (detail) text.append(" ", el("span", { className: "detail", testid: "error-detail" }, detail));
  const close = el("button", { type: "button", className: "dismiss", testid: "error-dismiss" }, "×");
  close.setAttribute("aria-label", "Dismiss");
  const banner = el("div", { className: "banner", testid: "error-banner" }, text, close);
  banner.setAttribute("role", "alert");
  banner.dataset.code = code;
  close.addEventListener("click", () => banner.remove());
  const banners = $("banners");
  banners.prepend(banner);
  while (banners.children.length > 4) banners.lastElementChild.remove();
}

function showNotice(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = !text;
}

// -- connection: hello/welcome, automatic reconnect with backoff --------------------------------
const conn = {
  ws: null,
  welcome: null,
  attempt: 0,
  timer: null,
  countdown: null,
  wanted: true, // false after unauthorized: a wrong token would fail again
  nextRequest: 1,
  pending: new Map(), // request_id -> "generate" | "watch"
  sessions: new Map(), // session id -> "generate" | "watch"
};

function setStatus(state, text) {
  const el = $("conn-status");
  el.dataset.state = state;
  el.textContent = text || state;
}

function tokenValue() {
  return $("token").value.trim();
}

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function connect() {
  clearTimeout(conn.timer);
  clearInterval(conn.countdown);
  if (conn.ws) {
    conn.ws.onclose = null;
    conn.ws.close(1000);
  }
  conn.wanted = true;
  conn.welcome = null;
  setStatus("connecting");
  const ws = new WebSocket(wsUrl());
  ws.binaryType = "arraybuffer";
  conn.ws = ws;
  ws.onopen = () => {
    const hello = { type: "hello", version: 1 };
    if (tokenValue()) hello.token = tokenValue();
    ws.send(JSON.stringify(hello));
  };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else onBinary(event.data);
  };
  ws.onclose = (event) => onClose(ws, event);
}

function onClose(ws, event) {
  if (ws !== conn.ws) return;
  conn.ws = null;
  conn.welcome = null;
  const hadSessions = conn.sessions.size > 0 || conn.pending.size > 0;
  for (const [id, tab] of conn.sessions) endSession(tab, id, { reason: "disconnected" });
  conn.pending.clear();
  if (gen.starting) genEnded("disconnected");
  if (watch.starting) watchEnded("disconnected");
  if (hadSessions) {
    showNotice("The connection was lost and the running sessions ended. " +
               "After it reconnects, start the session again.");
  }
  if (!conn.wanted || event.code === 1008) {
    conn.wanted = false;
    setStatus("disconnected", "disconnected — check the token, then Connect");
    return;
  }
  const delay = Math.min(30, 2 ** conn.attempt); // 1, 2, 4, ... 30 s
  conn.attempt += 1;
  let left = delay;
  setStatus("reconnecting", `reconnecting in ${left}s`);
  conn.countdown = setInterval(() => {
    left -= 1;
    if (left > 0) setStatus("reconnecting", `reconnecting in ${left}s`);
  }, 1000);
  conn.timer = setTimeout(() => { clearInterval(conn.countdown); connect(); }, delay * 1000);
}

function send(message) {
  if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN || !conn.welcome) {
    showError("not_ready", "not connected to the server");
    return false;
  }
  conn.ws.send(typeof message === "string" || message instanceof ArrayBuffer
    ? message : JSON.stringify(message));
  return true;
}

function startSession(tab, pipeline, params) {
  const requestId = `r${conn.nextRequest++}`;
  conn.pending.set(requestId, tab);
  return send({ type: "session.start", pipeline, params, request_id: requestId });
}

function onMessage(msg) {
  switch (msg.type) {
    case "welcome":
      conn.welcome = msg;
      conn.attempt = 0;
      setStatus("connected", `connected · ${msg.server}`);
      fillPipelines(msg.pipelines);
      watchModelNote();
      break;
    case "session.started": {
      const tab = conn.pending.get(msg.request_id);
      conn.pending.delete(msg.request_id);
      if (!tab) return;
      conn.sessions.set(msg.session, tab);
      if (tab === "generate") genStarted(msg); else watchStarted(msg);
      break;
    }
    case "session.ended": {
      const tab = conn.sessions.get(msg.session);
      if (tab) endSession(tab, msg.session, msg);
      break;
    }
    case "error": {
      showError(msg.code, msg.message);
      const tab = conn.pending.get(msg.request_id);
      if (tab) {
        conn.pending.delete(msg.request_id);
        if (tab === "generate") genEnded(`refused: ${msg.code}`);
        else watchEnded(`refused: ${msg.code}`);
      }
      break;
    }
    case "prompt.applied": if (msg.session === gen.session) genApplied(msg); break;
    case "metrics": if (msg.session === gen.session) genMetrics(msg); break;
    // the engine's acknowledgements: the state shown is the server's, not the button's
    case "session.paused": if (msg.session === gen.session) genState(`paused at frame ${msg.frame}`); break;
    case "session.resumed": if (msg.session === gen.session) genResumed(); break;
    case "caption":
      if (msg.session === watch.session) watchCaption(msg);
      else if (msg.session === gen.session) genCaption(msg);
      break;
    case "commentary.ended":
      if (msg.session === gen.session) showNotice(`the commentary stopped (${msg.reason}): ${msg.message || ""}`);
      break;
    default: break;
  }
}

function endSession(tab, id, msg) {
  conn.sessions.delete(id);
  if (tab === "generate" && id === gen.session) genEnded(msg.reason, msg.recording);
  if (tab === "watch" && id === watch.session) watchEnded(msg.reason);
}

function onBinary(buffer) {
  const frame = unpackFrame(buffer);
  if (frame && frame.kind === KIND_VIDEO && frame.session === gen.session) genFrame(frame);
}

const GENERATION = (name) => !/vlm|understand|caption/i.test(name);

function fillPipelines(names) {
  const select = $("gen-pipeline");
  const previous = select.value;
  select.replaceChildren();
  for (const name of names.filter(GENERATION)) select.add(new Option(name, name));
  // commentary needs the server's understanding pipeline
  const watcher = names.some((name) => !GENERATION(name));
  $("gen-commentary").disabled = !watcher;
  if (!watcher) $("gen-commentary").checked = false;
  if (names.includes(previous)) select.value = previous;
  genSizes();
  genButtons();
  watchButtons();
}

// -- Generate tab --------------------------------------------------------------------------------
const gen = {
  session: null,
  starting: false,
  fps: 16,
  frames: 0,
  arrivals: [], // performance.now() of recent frames
  decoding: false,
  next: null, // the newest frame waiting to be drawn
  switches: [], // {sentAt, entry, frame} waiting to become visible
  captions: [], // commentary {frame, end_frame, text}, in video order; ahead of the frames
  paused: false,
  stopping: false, // Stop was pressed; session.ended confirms it
  label: "", // "session N · pipeline HxW", as the state shows it while running
};

function genState(text) { $("gen-state").textContent = text; }

function genButtons() {
  const live = gen.session !== null && !gen.stopping;
  $("gen-start").disabled = gen.session !== null || gen.starting || !conn.welcome ||
    !$("gen-pipeline").options.length;
  $("gen-pause").disabled = !live || gen.paused;
  $("gen-resume").disabled = !live || !gen.paused;
  $("gen-stop").disabled = !live;
  $("gen-switch").disabled = !live;
}

// the sizes the chosen pipeline runs in real time here, when the server says (sizes.js)
function genSizes() {
  const sizes = conn.welcome && conn.welcome.sizes;
  markSizes($("gen-size"), sizes ? sizes[$("gen-pipeline").value] : undefined);
}
$("gen-pipeline").addEventListener("change", genSizes);

function timelineEntry(prompt, where) {
  const li = el("li", { testid: "timeline-entry" }, el("span", { className: "prompt" }, prompt),
    el("span", { className: "at", testid: "timeline-at" }, where));
  $("gen-timeline").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

$("gen-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = $("gen-prompt").value.trim();
  if (!prompt) return;
  const params = {
    prompt, seed: Math.max(0, parseInt($("gen-seed").value, 10) || 0),
    format: "jpeg", realtime: true, record: $("gen-record").checked,
  };
  if ($("gen-commentary").checked) params.commentary = true;
  if ($("gen-size").value) { // else the server's default size for the pipeline's model
    [params.height, params.width] = $("gen-size").value.split("x").map(Number);
  }
  if (!startSession("generate", $("gen-pipeline").value, params)) return;
  gen.starting = true;
  gen.prompt = prompt;
  $("gen-download").hidden = true;
  genState("starting");
  genButtons();
});

function genStarted(msg) {
  Object.assign(gen, {
    session: msg.session, starting: false, fps: msg.fps || 16, frames: 0, arrivals: [],
    next: null, switches: [], captions: [], paused: false, stopping: false,
    // height x width, as the size picker and session.start put them
    label: `session ${msg.session} · ${msg.pipeline} ${msg.height}×${msg.width}`,
  });
  const canvas = $("gen-canvas");
  canvas.width = msg.width;
  canvas.height = msg.height;
  canvas.style.aspectRatio = `${msg.width} / ${msg.height}`;
  $("gen-timeline").replaceChildren();
  $("gen-overlay").textContent = "";
  timelineEntry(gen.prompt, "frame 0 · 0.00 s");
  $("gen-frames").textContent = "0";
  $("gen-dropped").textContent = "0";
  genState(`running · ${gen.label}`);
  showNotice("");
  genButtons();
}

function genFrame(frame) {
  const now = performance.now();
  gen.frames += 1;
  gen.arrivals.push(now);
  while (gen.arrivals.length > 48) gen.arrivals.shift();
  $("gen-frames").textContent = String(gen.frames);
  const recent = gen.arrivals.filter((t) => now - t <= 1000);
  $("gen-fps").textContent = `${recent.length} fps`;
  if (gen.arrivals.length > 2) {
    const gaps = gen.arrivals.slice(1).map((t, i) => t - gen.arrivals[i]);
    const mean = gaps.reduce((a, b) => a + b, 0) / gaps.length;
    const sd = Math.sqrt(gaps.reduce((a, g) => a + (g - mean) ** 2, 0) / gaps.length);
    $("gen-jitter").textContent = `±${sd.toFixed(0)} ms`;
  }
  for (const s of gen.switches) {
    if (s.frame !== null && frame.index >= s.frame && !s.seen) {
      s.seen = true;
      s.entry.querySelector(".at").textContent += ` · on screen ${(now - s.sentAt).toFixed(0)} ms after Switch`;
    }
  }
  gen.switches = gen.switches.filter((s) => !s.seen);
  gen.next = frame;
  if (!gen.decoding) drawNext();
}

async function drawNext() {
  gen.decoding = true;
  while (gen.next) {
    const frame = gen.next;
    gen.next = null;
    if (frame.format !== FORMAT_JPEG && frame.format !== 2) continue; // jpeg/png only here
    const type = frame.format === FORMAT_JPEG ? "image/jpeg" : "image/png";
    try {
      const bitmap = await createImageBitmap(new Blob([frame.payload], { type }));
      const canvas = $("gen-canvas");
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      canvas.dataset.index = String(frame.index);
      bitmap.close();
      genOverlay(frame.index);
    } catch (err) {
      console.warn("frame", frame.index, "could not be decoded", err, FORMAT_NAMES[frame.format]);
    }
  }
  gen.decoding = false;
}

// Generation runs ahead of playback, so captions come before their frames: each is shown
// while the frames it describes are on screen, and forgotten once they have passed.
const MAX_CAPTIONS = 64;

function genCaption(msg) {
  gen.captions.push({ frame: msg.frame, end: msg.end_frame, text: msg.text });
  while (gen.captions.length > MAX_CAPTIONS) gen.captions.shift();
}

function genOverlay(index) {
  while (gen.captions.length && gen.captions[0].end <= index) gen.captions.shift();
  const now = gen.captions[0];
  if (now && now.frame <= index) {
    const overlay = $("gen-overlay");
    overlay.textContent = now.text; // a silent second clears it
    overlay.dataset.frame = String(now.frame);
  }
}

// After a pause the first gap would be the pause itself: jitter is measured from the resume.
function genResumed() {
  gen.arrivals = [];
  $("gen-jitter").textContent = "–";
  genState(`running · ${gen.label}`);
}

function genApplied(msg) {
  const pending = gen.switches.find((s) => s.frame === null && s.prompt === msg.prompt);
  const where = `frame ${msg.frame} · ${(msg.frame / gen.fps).toFixed(2)} s` +
    (msg.transition_chunks ? ` · blend ${msg.transition_chunks} chunks` : "");
  if (pending) {
    pending.frame = msg.frame;
    pending.entry.querySelector(".at").textContent = where;
    pending.entry.classList.remove("waiting");
  } else {
    timelineEntry(msg.prompt, where);
  }
}

function genMetrics(msg) {
  $("gen-fps").textContent = `${msg.fps.toFixed(1)} fps`;
  $("gen-step").textContent = msg.step_ms == null ? "–" : `${msg.step_ms.toFixed(0)} ms`;
  $("gen-dropped").textContent = String(msg.frames_dropped);
}

function genEnded(reason, recording) {
  const id = gen.session;
  gen.session = null;
  gen.starting = false;
  gen.paused = false;
  gen.stopping = false;
  genState(id === null ? `idle (${reason})` : `ended (${reason})`);
  if (recording) {
    const link = $("gen-download");
    link.href = recording;
    link.download = recording.split("/").pop();
    link.hidden = false;
  }
  genButtons();
}

$("gen-pause").addEventListener("click", () => {
  if (send({ type: "pause", session: gen.session })) { gen.paused = true; genState("pausing…"); }
  genButtons();
});
$("gen-resume").addEventListener("click", () => {
  if (send({ type: "resume", session: gen.session })) { gen.paused = false; genState("resuming…"); }
  genButtons();
});
// The engine ends a session between steps, so session.ended may trail a long step: the state
// says so at once, and the buttons stay off until it comes.
$("gen-stop").addEventListener("click", () => {
  if (gen.session === null || !send({ type: "stop", session: gen.session })) return;
  gen.stopping = true;
  genState("stopping…");
  genButtons();
});
$("switch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = $("gen-new-prompt").value.trim();
  const chunks = Math.min(64, Math.max(0, parseInt($("gen-transition").value, 10) || 0));
  if (!prompt || gen.session === null) return;
  if (!send({ type: "prompt.update", session: gen.session, prompt, transition_chunks: chunks })) return;
  const entry = timelineEntry(prompt, "waiting for the next chunk…");
  entry.classList.add("waiting");
  gen.switches.push({ prompt, entry, frame: null, sentAt: performance.now(), seen: false });
});

// -- Watch tab -----------------------------------------------------------------------------------
const watch = {
  session: null,
  starting: false,
  stream: null, // MediaStream of the camera
  objectUrl: null,
  mediaClock: false, // timestamps from the video's currentTime (file, toy world) or the wall
  timer: null,
  index: 0,
  startedAt: 0,
  lastTs: 0,
  encoding: false,
  canvas: document.createElement("canvas"),
};

function watchState(text) { $("watch-state").textContent = text; }

function watchButtons() {
  const live = watch.session !== null;
  const understanding = conn.welcome && conn.welcome.pipelines.some((n) => !GENERATION(n));
  $("watch-start").disabled = live || watch.starting || !understanding;
  $("watch-stop").disabled = !live && !watch.starting;
  $("watch-ask").disabled = !live;
  $("watch-source").disabled = live || watch.starting;
}

// What the model behind Ask can do: the embedded toy-world model was trained to commentate
// its world and answer a few kinds of questions about it, nothing more; the server says which model it runs where it can tell.
const MODEL_NOTES = {
  embedded: "The embedded toy-world model names the shapes and colours it sees each second " +
    "and when they appear, bounce or leave, and answers simple questions about them (what " +
    "colour, which shape, how many, which way); it does not answer free questions well. A real " +
    "StreamingVLM checkpoint (stream serve --vlm-dir) answers them.",
  checkpoint: "",
  unknown: "Questions are answered as well as the server's model can: a small model may only " +
    "describe what it sees.",
};

function watchModelNote() {
  const names = conn.welcome ? conn.welcome.pipelines.filter((n) => !GENERATION(n)) : [];
  const models = (conn.welcome && conn.welcome.models) || {};
  const source = names.length ? models[names[0]] || "unknown" : "unknown";
  const note = $("watch-model-note");
  note.textContent = MODEL_NOTES[source] ?? MODEL_NOTES.unknown;
  note.dataset.model = source;
  note.hidden = !note.textContent;
}

$("watch-source").addEventListener("change", () => {
  $("watch-file-label").hidden = $("watch-source").value !== "file";
});

// A machine with no camera watches the toy world by default.
if (navigator.mediaDevices && navigator.mediaDevices.enumerateDevices) {
  navigator.mediaDevices.enumerateDevices().then((devices) => {
    if (!devices.some((d) => d.kind === "videoinput")) $("watch-source").value = "toyworld";
  }, () => {});
} else {
  $("watch-source").value = "toyworld";
}

const TOYWORLD_SECONDS = 300;

async function openSource() {
  const video = $("watch-video");
  const source = $("watch-source").value;
  watch.mediaClock = source !== "camera";
  if (source === "toyworld") {
    const seed = Math.floor(Math.random() * 2 ** 31);
    video.srcObject = null;
    // a <video> sends no headers of ours: the token travels in the query, as the server asks
    const token = tokenValue() ? `&token=${encodeURIComponent(tokenValue())}` : "";
    video.src = `toyworld/feed.mp4?seed=${seed}&seconds=${TOYWORLD_SECONDS}${token}`;
  } else if (source === "camera") {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser offers no camera here (a camera needs https or localhost)");
    }
    watch.stream = await navigator.mediaDevices.getUserMedia({ video: true });
    video.srcObject = watch.stream;
  } else {
    const file = $("watch-file").files[0];
    if (!file) throw new Error("choose a video file first");
    watch.objectUrl = URL.createObjectURL(file);
    video.srcObject = null;
    video.src = watch.objectUrl;
  }
  await video.play();
}

function closeSource() {
  clearInterval(watch.timer);
  watch.timer = null;
  const video = $("watch-video");
  video.pause();
  if (watch.stream) watch.stream.getTracks().forEach((t) => t.stop());
  watch.stream = null;
  video.srcObject = null;
  if (video.getAttribute("src")) {
    video.removeAttribute("src");
    video.load();
  }
  if (watch.objectUrl) URL.revokeObjectURL(watch.objectUrl);
  watch.objectUrl = null;
}

$("watch-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  watch.starting = true;
  watchButtons();
  watchState("opening the source");
  try {
    await openSource();
  } catch (err) {
    watch.starting = false;
    closeSource();
    watchState("idle");
    showNotice(`Could not open the video source: ${err.message || err}`);
    watchButtons();
    return;
  }
  const params = { instruction: $("watch-instruction").value.trim() || "Commentate on this video." };
  const names = conn.welcome ? conn.welcome.pipelines.filter((n) => !GENERATION(n)) : [];
  if (!startSession("watch", names[0] || "streaming_vlm", params)) {
    watchEnded("not connected");
    return;
  }
  watchState("starting");
});

function watchStarted(msg) {
  Object.assign(watch, {
    session: msg.session, starting: false, index: 0, lastTs: 0, startedAt: performance.now(),
  });
  $("watch-captions").replaceChildren();
  $("watch-overlay").textContent = "";
  $("watch-sent").textContent = "0";
  watchState(`running · session ${msg.session} · ${msg.pipeline}`);
  showNotice("");
  const rate = Math.min(30, Math.max(0.5, parseFloat($("watch-rate").value) || 2));
  watch.timer = setInterval(captureFrame, 1000 / rate);
  watchButtons();
}

function captureFrame() {
  const video = $("watch-video");
  if (watch.session === null || watch.encoding || video.readyState < 2 || !video.videoWidth) return;
  if (watch.mediaClock && video.ended) return;
  const raw = watch.mediaClock ? video.currentTime : (performance.now() - watch.startedAt) / 1000;
  const timestamp = Math.max(watch.lastTs, raw); // never backwards
  const limit = Math.min(MAX_INPUT_PIXELS, conn.welcome.limits.max_frame_pixels || Infinity);
  let width = video.videoWidth;
  let height = video.videoHeight;
  if (width * height > limit) {
    const scale = Math.sqrt(limit / (width * height));
    width = Math.max(1, Math.floor(width * scale));
    height = Math.max(1, Math.min(Math.floor(height * scale), Math.floor(limit / width)));
  }
  const canvas = watch.canvas;
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(video, 0, 0, width, height);
  watch.encoding = true;
  canvas.toBlob(async (blob) => {
    try {
      if (!blob || watch.session === null) return;
      const payload = await blob.arrayBuffer();
      const frame = packFrame(watch.session, watch.index, timestamp, width, height, payload);
      if (send(frame)) {
        watch.index += 1;
        watch.lastTs = timestamp;
        $("watch-sent").textContent = String(watch.index);
        $("watch-time").textContent = `${timestamp.toFixed(1)} s`;
      }
    } finally {
      watch.encoding = false;
    }
  }, "image/jpeg", 0.85);
}

function watchCaption(msg) {
  const li = el("li", { testid: "caption-entry" },
    el("span", { className: "at", testid: "caption-time" },
      `${msg.start.toFixed(1)}–${msg.end.toFixed(1)} s`),
    el("span", { className: msg.text ? "text" : "text silent" }, msg.text || "(silence)"));
  Object.assign(li.dataset, { start: String(msg.start), end: String(msg.end) });
  const list = $("watch-captions");
  list.append(li);
  list.scrollTop = list.scrollHeight;
  if (msg.text) $("watch-overlay").textContent = msg.text;
  $("watch-lag").textContent = `${msg.lag.toFixed(1)} s`;
}

function watchEnded(reason) {
  const id = watch.session;
  watch.session = null;
  watch.starting = false;
  closeSource();
  watchState(id === null ? `idle (${reason})` : `ended (${reason})`);
  watchButtons();
}

$("watch-stop").addEventListener("click", () => {
  if (watch.session !== null) {
    clearInterval(watch.timer);
    if (send({ type: "stop", session: watch.session })) watchState("stopping");
  } else {
    watchEnded("cancelled");
  }
});

$("question-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("watch-question").value.trim();
  if (!text || watch.session === null) return;
  if (!send({ type: "question", session: watch.session, text })) return;
  $("watch-captions").append(el("li", { className: "question", testid: "question-entry" }, `Q: ${text}`));
  $("watch-question").value = "";
});

// -- tabs, token, start ----------------------------------------------------------------------------
function selectTab(name) {
  for (const tab of ["generate", "watch"]) {
    const on = tab === name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(on));
    $(`tab-${tab}`).tabIndex = on ? 0 : -1;
    $(`panel-${tab}`).hidden = !on;
  }
}
$("tab-generate").addEventListener("click", () => selectTab("generate"));
$("tab-watch").addEventListener("click", () => selectTab("watch"));
document.querySelector(".tabs").addEventListener("keydown", (event) => {
  if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
  const next = $("tab-generate").getAttribute("aria-selected") === "true" ? "watch" : "generate";
  selectTab(next);
  $(`tab-${next}`).focus();
});

$("connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("stream.token", tokenValue());
  conn.attempt = 0;
  connect();
});

// #token=... is read first: a fragment never reaches the server, a proxy or their logs
const urlToken = new URLSearchParams(location.hash.slice(1)).get("token")
  ?? new URLSearchParams(location.search).get("token");
$("token").value = urlToken !== null ? urlToken : localStorage.getItem("stream.token") || "";
setInterval(() => { genButtons(); watchButtons(); }, 500); // keeps buttons in step with the socket
window.streamApp = { conn, gen, watch, packFrame, unpackFrame, connect }; // for tests and debugging
connect();
