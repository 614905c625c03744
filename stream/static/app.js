// The browser page of the streaming video service: one WebSocket to /ws (docs/protocol.md),
// three tabs. Generate: prompt -> frames on a canvas. Watch: camera, file or toy world ->
// captions. Restyle (restyle.js): a feed -> restyled frames. The connection here routes each
// session's messages to the tab that started it (`tabs`). Plain JS, no build step, no
// dependencies; common.js holds what the tabs share.
"use strict";

// -- connection: hello/welcome, automatic reconnect with backoff --------------------------------
const conn = {
  ws: null,
  welcome: null,
  attempt: 0,
  timer: null,
  countdown: null,
  wanted: true, // false after unauthorized: a wrong token would fail again
  nextRequest: 1,
  pending: new Map(), // request_id -> the name of the tab that asked, a key of `tabs`
  sessions: new Map(), // session id -> the name of its tab
};

// The tabs that run sessions, by name; each is {state (its .session and .starting), welcome(msg),
// started(msg), ended(reason, recording), message(msg) (a message of its session), frame(frame)
// (a video frame of its session), buttons()}. Generate and Watch are below, Restyle in restyle.js.
const tabs = {};

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
  for (const tab of Object.values(tabs)) if (tab.state.starting) tab.ended("disconnected");
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
      for (const tab of Object.values(tabs)) tab.welcome(msg);
      break;
    case "session.started": {
      const tab = conn.pending.get(msg.request_id);
      conn.pending.delete(msg.request_id);
      if (!tab) return;
      conn.sessions.set(msg.session, tab);
      tabs[tab].started(msg);
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
        tabs[tab].ended(`refused: ${msg.code}`);
      }
      break;
    }
    default: { // the messages of a running session go to its tab
      const tab = tabs[conn.sessions.get(msg.session)];
      if (tab && msg.session === tab.state.session) tab.message(msg);
      break;
    }
  }
}

function endSession(name, id, msg) {
  conn.sessions.delete(id);
  const tab = tabs[name];
  if (id === tab.state.session) tab.ended(msg.reason, msg.recording);
}

function onBinary(buffer) {
  const frame = unpackFrame(buffer);
  if (!frame || frame.kind !== KIND_VIDEO) return;
  const tab = tabs[conn.sessions.get(frame.session)];
  if (tab && frame.session === tab.state.session) tab.frame(frame);
}

const GENERATION = (name) => !/vlm|understand|caption/i.test(name);

// a pipeline picker of the generation pipelines the server runs; keeps the choice it had
function fillGenerationPipelines(select, names) {
  const previous = select.value;
  select.replaceChildren();
  for (const name of names.filter(GENERATION)) select.add(new Option(name, name));
  if (names.includes(previous)) select.value = previous;
}

function genWelcome(msg) {
  fillGenerationPipelines($("gen-pipeline"), msg.pipelines);
  // commentary needs the server's understanding pipeline
  const watcher = msg.pipelines.some((name) => !GENERATION(name));
  $("gen-commentary").disabled = !watcher;
  if (!watcher) $("gen-commentary").checked = false;
  genSizes();
  genModelNote();
  genButtons();
}

// -- Generate tab --------------------------------------------------------------------------------
const gen = {
  session: null,
  starting: false,
  fps: 16,
  frames: 0,
  arrivals: [], // performance.now() of recent frames
  output: new FrameCanvas($("gen-canvas"), (index) => genOverlay(index)),
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
$("gen-pipeline").addEventListener("change", () => { genSizes(); genModelNote(); });

// the embedded generator knows the toy world only; the server says which pipelines run it
const TOYWORLD_GENERATOR_NOTE = "Toy-world models: they know coloured shapes, not the real " +
  "world. Prompts read like \"a red circle moves right on a black background\"; load real " +
  "checkpoints with stream serve --model-dir.";

function genModelNote() {
  const source = modelSource($("gen-pipeline").value);
  showModelNote($("gen-model-note"), source, source === "embedded" ? TOYWORLD_GENERATOR_NOTE : "");
}

// what the server's welcome says a pipeline runs: "embedded", "checkpoint" or "unknown"
function modelSource(pipeline) {
  const models = (conn.welcome && conn.welcome.models) || {};
  return models[pipeline] || "unknown";
}

function showModelNote(note, source, text) {
  note.textContent = text;
  note.dataset.model = source;
  note.hidden = !text;
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
    switches: [], captions: [], paused: false, stopping: false,
    // height x width, as the size picker and session.start put them
    label: `session ${msg.session} · ${msg.pipeline} ${msg.height}×${msg.width}`,
  });
  gen.output.resize(msg.width, msg.height);
  $("gen-timeline").replaceChildren();
  $("gen-overlay").textContent = "";
  timelineEntry($("gen-timeline"), gen.prompt, "frame 0 · 0.00 s");
  $("gen-frames").textContent = "0";
  $("gen-dropped").textContent = "0";
  genState(`running · ${gen.label}`);
  showNotice("");
  genButtons();
}

function genFrame(frame) {
  const now = performance.now();
  gen.frames += 1;
  const fps = frameArrived(gen.arrivals, now);
  $("gen-frames").textContent = String(gen.frames);
  $("gen-fps").textContent = `${fps} fps`;
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
  gen.output.push(frame);
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
    timelineEntry($("gen-timeline"), msg.prompt, where);
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
  const entry = timelineEntry($("gen-timeline"), prompt, "waiting for the next chunk…");
  entry.classList.add("waiting");
  gen.switches.push({ prompt, entry, frame: null, sentAt: performance.now(), seen: false });
});

function genMessage(msg) {
  switch (msg.type) {
    case "prompt.applied": genApplied(msg); break;
    case "metrics": genMetrics(msg); break;
    // the engine's acknowledgements: the state shown is the server's, not the button's
    case "session.paused": genState(`paused at frame ${msg.frame}`); break;
    case "session.resumed": genResumed(); break;
    case "caption": genCaption(msg); break;
    case "commentary.ended":
      showNotice(`the commentary stopped (${msg.reason}): ${msg.message || ""}`);
      break;
    default: break;
  }
}

tabs.generate = {
  state: gen, welcome: genWelcome, started: genStarted, ended: genEnded, message: genMessage,
  frame: genFrame, buttons: genButtons,
};

// -- Watch tab -----------------------------------------------------------------------------------
const MAX_INPUT_PIXELS = 768 * 28 * 28; // the VLM's own budget per frame

const watch = {
  session: null,
  starting: false,
  source: new VideoSource($("watch-video")),
  timer: null,
  index: 0,
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
  embedded: "Toy-world model: it knows coloured shapes, not the real world. It names the " +
    "shapes and colours it sees each second and when they appear, bounce or leave, and " +
    "answers simple questions about them (what colour, which shape, how many, which way); it " +
    "does not answer free questions well. A real StreamingVLM checkpoint (stream serve " +
    "--vlm-dir) answers them.",
  checkpoint: "",
  unknown: "Questions are answered as well as the server's model can: a small model may only " +
    "describe what it sees.",
};

function watchModelNote() {
  const names = conn.welcome ? conn.welcome.pipelines.filter((n) => !GENERATION(n)) : [];
  const source = modelSource(names[0]);
  showModelNote($("watch-model-note"), source, MODEL_NOTES[source] ?? MODEL_NOTES.unknown);
}

$("watch-source").addEventListener("change", () => {
  $("watch-file-label").hidden = $("watch-source").value !== "file";
});

preferToyWorldWithoutCamera($("watch-source"));

function closeSource() {
  clearInterval(watch.timer);
  watch.timer = null;
  watch.source.close();
}

$("watch-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  watch.starting = true;
  watchButtons();
  watchState("opening the source");
  try {
    await watch.source.open($("watch-source").value, $("watch-file").files[0], tokenValue());
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
  Object.assign(watch, { session: msg.session, starting: false, index: 0 });
  watch.source.restartClock();
  $("watch-captions").replaceChildren();
  $("watch-overlay").textContent = "";
  $("watch-sent").textContent = "0";
  watchState(`running · session ${msg.session} · ${msg.pipeline}`);
  showNotice("");
  const rate = Math.min(30, Math.max(0.5, parseFloat($("watch-rate").value) || 2));
  watch.timer = setInterval(captureFrame, 1000 / rate);
  watchButtons();
}

async function captureFrame() {
  if (watch.session === null || !conn.welcome) return;
  const limit = Math.min(MAX_INPUT_PIXELS, conn.welcome.limits.max_frame_pixels || Infinity);
  const shot = await watch.source.grab(limit);
  if (!shot || watch.session === null) return;
  const { timestamp, width, height, payload } = shot;
  if (send(packFrame(watch.session, watch.index, timestamp, width, height, payload))) {
    watch.index += 1;
    $("watch-sent").textContent = String(watch.index);
    $("watch-time").textContent = `${timestamp.toFixed(1)} s`;
  }
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

tabs.watch = {
  state: watch,
  welcome: () => { watchModelNote(); watchButtons(); },
  started: watchStarted,
  ended: watchEnded,
  message: (msg) => { if (msg.type === "caption") watchCaption(msg); },
  frame: () => {}, // an understanding session sends no video
  buttons: watchButtons,
};

$("question-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("watch-question").value.trim();
  if (!text || watch.session === null) return;
  if (!send({ type: "question", session: watch.session, text })) return;
  $("watch-captions").append(el("li", { className: "question", testid: "question-entry" }, `Q: ${text}`));
  $("watch-question").value = "";
});

// -- tabs, token, start ----------------------------------------------------------------------------
const TAB_NAMES = [...document.querySelectorAll(".tabs [role=tab]")].map((t) => t.id.slice(4));

function selectTab(name) {
  for (const tab of TAB_NAMES) {
    const on = tab === name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(on));
    $(`tab-${tab}`).tabIndex = on ? 0 : -1;
    $(`panel-${tab}`).hidden = !on;
  }
}
for (const name of TAB_NAMES) $(`tab-${name}`).addEventListener("click", () => selectTab(name));
document.querySelector(".tabs").addEventListener("keydown", (event) => {
  if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
  const now = TAB_NAMES.findIndex((t) => $(`tab-${t}`).getAttribute("aria-selected") === "true");
  const step = event.key === "ArrowRight" ? 1 : TAB_NAMES.length - 1;
  const next = TAB_NAMES[(now + step) % TAB_NAMES.length];
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
// keeps buttons in step with the socket
setInterval(() => { for (const tab of Object.values(tabs)) tab.buttons(); }, 500);
window.streamApp = { conn, tabs, gen, watch, packFrame, unpackFrame, connect }; // tests, debugging
// after every script has run (restyle.js registers its tab), so that every tab hears the welcome
document.addEventListener("DOMContentLoaded", connect);

