// The Restyle tab: a feed (webcam, local file or the server's toy world) goes to the server as
// the input frames of a generation session started with params.restyle (docs/protocol.md); the
// server restyles it under the prompt, and the restyled frames come back and are drawn beside
// the input. Strength (restyle.update) and prompt (prompt.update) change while it runs; Pause
// holds the feed and the restyling (pause), Resume plays the feed on from where it stood (resume).
// Loaded after common.js and app.js, whose connection routes this tab's sessions here.
"use strict";

const STRENGTH_THROTTLE_MS = 150; // a dragged slider sends at most one restyle.update this often
// A chunk is restyled once its input slots are all in, so a feed's last chunk waits for a later
// frame (docs/protocol.md): when a file ends, its last frame goes once more at least this much
// later (longer than a chunk of the feed: 12 frames at 16 fps are 0.75 s), and past all the
// input the server holds (input_lead_frames: Rolling Forcing keeps a chunk a window level)
const FEED_END_PAD_SECONDS = 1;

const restyle = {
  session: null,
  starting: false,
  paused: false, // Pause was pressed: no input goes out until Resume
  stopping: false, // Stop was pressed; session.ended confirms it
  fps: 16,
  width: 0,
  height: 0,
  label: "", // "session N · pipeline HxW"
  prompt: "", // the prompt it started with
  source: new VideoSource($("restyle-video")),
  output: new FrameCanvas($("restyle-canvas")),
  timer: null, // the input frames' capture
  index: 0, // input frames sent
  first: null, // the first input frame sent {timestamp, ...}: slot i is at its timestamp + i / fps
  last: null, // the last one {timestamp, width, height, payload}
  lastFrame: null, // when the feed has ended: the index of the last frame it covers
  inputLead: 0, // input frames the server takes in beyond those it has sent (its last word)
  frames: 0, // restyled frames received
  arrivals: [], // performance.now() of recent restyled frames
  strengthSent: null, // the strength the server was last asked for
  strengthTimer: null,
  switches: [], // prompt switches {prompt, entry} waiting for prompt.applied
};

function restyleState(text) { $("restyle-state").textContent = text; }

function restyleStrength() {
  return Math.round(parseFloat($("restyle-strength").value) * 100) / 100;
}

function restyleButtons() {
  const busy = restyle.session !== null || restyle.starting;
  const live = restyle.session !== null && !restyle.stopping;
  $("restyle-start").disabled = busy || !conn.welcome || !$("restyle-pipeline").options.length;
  $("restyle-pause").disabled = !live || restyle.paused;
  $("restyle-resume").disabled = !live || !restyle.paused;
  $("restyle-stop").disabled = !live && !(restyle.starting && restyle.session === null);
  $("restyle-switch").disabled = !live;
  for (const id of ["restyle-source", "restyle-pipeline", "restyle-size", "restyle-file"]) {
    $(id).disabled = busy;
  }
}

// the sizes the chosen pipeline generates in real time here, when the server says (sizes.js);
// restyling also encodes the input, so a size near the edge may still be refused compute_full
function restyleSizes() {
  const sizes = conn.welcome && conn.welcome.sizes;
  markSizes($("restyle-size"), sizes ? sizes[$("restyle-pipeline").value] : undefined);
}
$("restyle-pipeline").addEventListener("change", restyleSizes);

function restyleWelcome(msg) {
  fillGenerationPipelines($("restyle-pipeline"), msg.pipelines);
  restyleSizes();
  restyleButtons();
}

$("restyle-source").addEventListener("change", () => {
  $("restyle-file-label").hidden = $("restyle-source").value !== "file";
});
preferToyWorldWithoutCamera($("restyle-source"));

$("restyle-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("restyle-prompt").value.trim();
  if (!prompt || restyle.session !== null || restyle.starting) return;
  restyle.starting = true;
  $("restyle-download").hidden = true;
  restyleState("opening the source");
  restyleButtons();
  try {
    await restyle.source.open($("restyle-source").value, $("restyle-file").files[0], tokenValue());
  } catch (err) {
    restyleEnded("no source");
    showNotice(`Could not open the video source: ${err.message || err}`);
    return;
  }
  if (!restyle.starting) return; // Stop was pressed while the source opened
  const strength = restyleStrength();
  const params = {
    prompt, seed: Math.max(0, parseInt($("restyle-seed").value, 10) || 0), format: "jpeg",
    record: $("restyle-record").checked, restyle: { strength },
  };
  if ($("restyle-size").value) { // else the server's default size for the pipeline's model
    [params.height, params.width] = $("restyle-size").value.split("x").map(Number);
  }
  if (!startSession("restyle", $("restyle-pipeline").value, params)) {
    restyleEnded("not connected");
    return;
  }
  restyle.prompt = prompt;
  restyle.strengthSent = strength;
  restyleState("starting");
});

function restyleStarted(msg) {
  if (!restyle.starting) { // cancelled while the server was starting it
    send({ type: "stop", session: msg.session });
    return;
  }
  Object.assign(restyle, {
    session: msg.session, starting: false, paused: false, stopping: false, fps: msg.fps || 16,
    width: msg.width, height: msg.height, index: 0, first: null, last: null, lastFrame: null,
    frames: 0, arrivals: [], switches: [], inputLead: msg.restyle?.input_lead_frames || 0,
    label: `session ${msg.session} · ${msg.pipeline} ${msg.height}×${msg.width}`,
  });
  restyle.output.resize(msg.width, msg.height);
  // the server crops the input to the output's aspect (centred): the video shows that crop
  $("restyle-video").style.aspectRatio = `${msg.width} / ${msg.height}`;
  $("restyle-timeline").replaceChildren();
  for (const id of ["restyle-sent", "restyle-taken", "restyle-skipped", "restyle-frames",
    "restyle-dropped"]) $(id).textContent = "0";
  for (const id of ["restyle-fps", "restyle-latency", "restyle-step"]) $(id).textContent = "–";
  showNotice("");
  timelineEntry($("restyle-timeline"), restyle.prompt, "frame 0 · 0.00 s");
  restyleStrengthApplied(msg.restyle.strength, 0);
  restyleRunning();
  restyle.source.restartClock();
  restyle.timer = setInterval(restyleCapture, 1000 / restyle.fps); // at the pipeline's own rate
  restyleButtons();
}

// the state while it runs: before the feed's end, or after it, waiting for its last frames
function restyleRunning() {
  restyleState(restyle.lastFrame === null ? `running · ${restyle.label}`
    : `the feed ended · restyling up to frame ${restyle.lastFrame} · ${restyle.label}`);
}

// Input frames as large as the session's picture needs (the server crops them to its aspect
// and resizes them to its size), and never over the server's limit
function restyleInputPixels() {
  const video = $("restyle-video");
  const cover = Math.min(1, Math.max(restyle.width / video.videoWidth,
    restyle.height / video.videoHeight));
  const need = Math.ceil(video.videoWidth * cover) * Math.ceil(video.videoHeight * cover);
  return Math.min(need, conn.welcome.limits.max_frame_pixels || Infinity);
}

function sendInput(shot) {
  const { timestamp, width, height, payload } = shot;
  if (!send(packFrame(restyle.session, restyle.index, timestamp, width, height, payload))) return;
  restyle.index += 1;
  restyle.first = restyle.first || shot;
  restyle.last = shot;
  $("restyle-sent").textContent = String(restyle.index);
}

async function restyleCapture() {
  if (restyle.session === null || restyle.stopping || !conn.welcome) return;
  if (restyle.source.ended()) {
    restyleFeedEnded();
    return;
  }
  const shot = await restyle.source.grab(restyleInputPixels());
  if (shot && restyle.session !== null && !restyle.stopping && !restyle.paused) sendInput(shot);
}

// A file (or the toy world's feed) has played to its end: its last frame goes once more a
// chunk later so that its last chunk is restyled, and the session stops once the frame of the
// feed's last slot is back (the pad's own slots restyle nothing new).
function restyleFeedEnded() {
  clearInterval(restyle.timer);
  restyle.timer = null;
  if (restyle.last === null) { // it ended before a frame could be sent
    restyleStop();
    return;
  }
  restyle.lastFrame = Math.floor((restyle.last.timestamp - restyle.first.timestamp) * restyle.fps);
  const pad = Math.max(FEED_END_PAD_SECONDS, (restyle.inputLead + 1) / restyle.fps);
  sendInput({ ...restyle.last, timestamp: restyle.last.timestamp + pad });
  restyleRunning();
}

function restyleFrame(frame) {
  restyle.frames += 1;
  $("restyle-frames").textContent = String(restyle.frames);
  $("restyle-fps").textContent = `${frameArrived(restyle.arrivals, performance.now())} fps`;
  restyle.output.push(frame);
  if (restyle.lastFrame !== null && frame.index >= restyle.lastFrame && !restyle.stopping) {
    restyleStop();
  }
}

function restyleStrengthApplied(strength, frame) {
  const shown = $("restyle-applied");
  shown.textContent = `${strength.toFixed(2)} from frame ${frame}`;
  Object.assign(shown.dataset, { strength: String(strength), frame: String(frame) });
  timelineEntry($("restyle-timeline"), `strength ${strength.toFixed(2)}`,
    `frame ${frame} · ${(frame / restyle.fps).toFixed(2)} s`);
}

function restyleMessage(msg) {
  switch (msg.type) {
    case "restyle.applied":
      restyle.inputLead = msg.input_lead_frames || restyle.inputLead;
      restyleStrengthApplied(msg.strength, msg.frame);
      break;
    case "prompt.applied": {
      const where = `frame ${msg.frame} · ${(msg.frame / restyle.fps).toFixed(2)} s`;
      const pending = restyle.switches.findIndex((s) => s.prompt === msg.prompt);
      if (pending < 0) {
        timelineEntry($("restyle-timeline"), msg.prompt, where);
        break;
      }
      const { entry } = restyle.switches.splice(pending, 1)[0];
      entry.querySelector(".at").textContent = where;
      entry.classList.remove("waiting");
      break;
    }
    // the engine's acknowledgements: the state shown is the server's, not the button's
    case "session.paused": restyleState(`paused at frame ${msg.frame}`); break;
    case "session.resumed": restyleRunning(); break;
    case "metrics": {
      $("restyle-step").textContent = msg.step_ms == null ? "–" : `${msg.step_ms.toFixed(0)} ms`;
      $("restyle-taken").textContent = String(msg.frames_received);
      $("restyle-skipped").textContent = String(msg.frames_skipped);
      $("restyle-dropped").textContent = String(msg.frames_dropped);
      // the server's: from an input frame's arrival to the sending of its restyled frame
      const latency = msg.latency_ms;
      $("restyle-latency").textContent = latency == null ? "–"
        : `${latency.p50.toFixed(0)} / ${latency.p95.toFixed(0)} ms`;
      break;
    }
    default: break;
  }
}

function restyleEnded(reason, recording) {
  const id = restyle.session;
  Object.assign(restyle, { session: null, starting: false, paused: false, stopping: false });
  clearInterval(restyle.timer);
  restyle.timer = null;
  clearTimeout(restyle.strengthTimer);
  restyle.strengthTimer = null;
  restyle.source.close();
  restyleState(id === null ? `idle (${reason})` : `ended (${reason})`);
  if (recording) {
    const link = $("restyle-download");
    link.href = recording;
    link.download = recording.split("/").pop();
    link.hidden = false;
  }
  restyleButtons();
}

// A dragged slider fires input events by the dozen: the newest value goes out at most every
// STRENGTH_THROTTLE_MS, and the one it rests on always does.
function sendStrength() {
  restyle.strengthTimer = null;
  const strength = restyleStrength();
  if (restyle.session === null || restyle.stopping || strength === restyle.strengthSent) return;
  if (send({ type: "restyle.update", session: restyle.session, strength })) {
    restyle.strengthSent = strength;
  }
}

$("restyle-strength").addEventListener("input", () => {
  $("restyle-strength-value").textContent = restyleStrength().toFixed(2);
  if (restyle.session !== null && restyle.strengthTimer === null) {
    restyle.strengthTimer = setTimeout(sendStrength, STRENGTH_THROTTLE_MS);
  }
});

$("restyle-switch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = $("restyle-new-prompt").value.trim();
  if (!prompt || restyle.session === null) return;
  if (!send({ type: "prompt.update", session: restyle.session, prompt })) return;
  const entry = timelineEntry($("restyle-timeline"), prompt, "waiting for the next chunk…");
  entry.classList.add("waiting");
  restyle.switches.push({ prompt, entry });
});

// As on Generate, session.ended may trail a step: the state says so at once, the input stops.
function restyleStop() {
  if (restyle.session === null) {
    restyleEnded("cancelled");
    return;
  }
  if (!send({ type: "stop", session: restyle.session })) return;
  restyle.stopping = true;
  clearInterval(restyle.timer);
  restyleState("stopping…");
  restyleButtons();
}
$("restyle-stop").addEventListener("click", restyleStop);

// A paused file does not play on, so its timestamps (its currentTime) go on from where it
// paused; a camera's clock skips the pause. A feed that has ended has nothing more to send.
$("restyle-pause").addEventListener("click", () => {
  if (!send({ type: "pause", session: restyle.session })) return;
  restyle.paused = true;
  clearInterval(restyle.timer);
  restyle.timer = null;
  restyle.source.pause();
  restyleState("pausing…");
  restyleButtons();
});
$("restyle-resume").addEventListener("click", () => {
  if (!send({ type: "resume", session: restyle.session })) return;
  restyle.paused = false;
  if (restyle.lastFrame === null) {
    restyle.source.resume().catch((err) => {
      showNotice(`Could not resume the video source: ${err.message || err}`);
    });
    restyle.timer = setInterval(restyleCapture, 1000 / restyle.fps);
  }
  restyleState("resuming…");
  restyleButtons();
});

tabs.restyle = {
  state: restyle, welcome: restyleWelcome, started: restyleStarted, ended: restyleEnded,
  message: restyleMessage, frame: restyleFrame, buttons: restyleButtons,
};
window.streamApp.restyle = restyle;
