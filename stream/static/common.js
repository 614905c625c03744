// What the page's tabs share (loaded before app.js and restyle.js): DOM helpers, the binary
// frame header, error banners, a canvas that shows a stream of frames, and the video sources a
// feed is taken from (webcam, local file, the server's toy world).
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
const FORMAT_PNG = 2;
const FORMAT_NAMES = { 1: "jpeg", 2: "png", 3: "raw", 4: "h264" };

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

// A session's history of changes (prompts, strengths): each with where in the video it took hold
function timelineEntry(list, text, where) {
  const li = el("li", { testid: "timeline-entry" }, el("span", { className: "prompt" }, text),
    el("span", { className: "at", testid: "timeline-at" }, where));
  list.append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

// Records a frame's arrival (performance.now()) in a tab's recent arrivals, the newest 48 kept,
// and returns how many came within the last second: the tab's fps readout
function frameArrived(arrivals, now) {
  arrivals.push(now);
  while (arrivals.length > 48) arrivals.shift();
  return arrivals.filter((t) => now - t <= 1000).length;
}

// -- a canvas showing a stream of frames: each is decoded (createImageBitmap) and drawn as it
// arrives; when decoding falls behind, only the newest waiting frame is drawn ------------------
class FrameCanvas {
  constructor(canvas, onDrawn = () => {}) {
    this.canvas = canvas;
    this.onDrawn = onDrawn; // (index) after a frame is on the canvas
    this.next = null;
    this.decoding = false;
  }

  resize(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.canvas.style.aspectRatio = `${width} / ${height}`;
  }

  push(frame) {
    this.next = frame;
    if (!this.decoding) this.drain();
  }

  async drain() {
    this.decoding = true;
    while (this.next) {
      const frame = this.next;
      this.next = null;
      if (frame.format !== FORMAT_JPEG && frame.format !== FORMAT_PNG) continue; // decodable here
      const type = frame.format === FORMAT_JPEG ? "image/jpeg" : "image/png";
      try {
        const bitmap = await createImageBitmap(new Blob([frame.payload], { type }));
        const canvas = this.canvas;
        canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
        canvas.dataset.index = String(frame.index);
        bitmap.close();
        this.onDrawn(frame.index);
      } catch (err) {
        console.warn("frame", frame.index, "could not be decoded", err, FORMAT_NAMES[frame.format]);
      }
    }
    this.decoding = false;
  }
}

// -- a feed for the server: the webcam, a local video file or the server's toy world, played in
// a <video>; grab() takes its current picture as a JPEG input frame ----------------------------
const TOYWORLD_SECONDS = 300;
const INPUT_JPEG_QUALITY = 0.85;

// A machine with no camera takes the toy world by default.
function preferToyWorldWithoutCamera(select) {
  if (navigator.mediaDevices && navigator.mediaDevices.enumerateDevices) {
    navigator.mediaDevices.enumerateDevices().then((devices) => {
      if (!devices.some((d) => d.kind === "videoinput")) select.value = "toyworld";
    }, () => {});
  } else {
    select.value = "toyworld";
  }
}

// The largest width x height of the picture's aspect within maxPixels (never larger than it is)
function fitPixels(width, height, maxPixels) {
  if (width * height <= maxPixels) return { width, height };
  const scale = Math.sqrt(maxPixels / (width * height));
  const w = Math.max(1, Math.floor(width * scale));
  return { width: w, height: Math.max(1, Math.min(Math.floor(height * scale), Math.floor(maxPixels / w))) };
}

class VideoSource {
  constructor(video) {
    this.video = video;
    this.stream = null; // MediaStream of the camera
    this.objectUrl = null;
    this.mediaClock = false; // timestamps from the video's currentTime (file, toy world) or the wall
    this.startedAt = 0;
    this.pausedAt = 0;
    this.lastTs = 0;
    this.encoding = false;
    this.canvas = document.createElement("canvas");
  }

  // kind: "camera" | "file" | "toyworld"; file: the chosen File for "file"; token: for the feed
  async open(kind, file, token) {
    const video = this.video;
    this.mediaClock = kind !== "camera";
    if (kind === "toyworld") {
      const seed = Math.floor(Math.random() * 2 ** 31);
      video.srcObject = null;
      // a <video> sends no headers of ours: the token travels in the query, as the server asks
      const auth = token ? `&token=${encodeURIComponent(token)}` : "";
      video.src = `toyworld/feed.mp4?seed=${seed}&seconds=${TOYWORLD_SECONDS}${auth}`;
    } else if (kind === "camera") {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error("this browser offers no camera here (a camera needs https or localhost)");
      }
      this.stream = await navigator.mediaDevices.getUserMedia({ video: true });
      video.srcObject = this.stream;
    } else {
      if (!file) throw new Error("choose a video file first");
      this.objectUrl = URL.createObjectURL(file);
      video.srcObject = null;
      video.src = this.objectUrl;
    }
    await video.play();
  }

  close() {
    const video = this.video;
    video.pause();
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
    video.srcObject = null;
    if (video.getAttribute("src")) {
      video.removeAttribute("src");
      video.load();
    }
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
  }

  // a file or the toy world has played to its end (a camera never ends)
  ended() {
    return this.mediaClock && this.video.ended;
  }

  // the feed's clock starts now (a camera's timestamps count from here)
  restartClock() {
    this.startedAt = performance.now();
    this.lastTs = 0;
  }

  // The feed stands still until resume(): a file or the toy world stops where it is (its
  // currentTime with it), and a camera's clock does not count the time paused.
  pause() {
    this.video.pause();
    this.pausedAt = performance.now();
  }

  // plays on from where it paused; a pause() before the picture is back cuts play() short,
  // which is no error
  resume() {
    this.startedAt += performance.now() - this.pausedAt;
    return this.video.play().catch((err) => {
      if (err.name !== "AbortError") throw err;
    });
  }

  // The current picture, scaled to at most maxPixels, as {timestamp, width, height, payload
  // (JPEG bytes)}; null while there is none (not playing yet, ended, the last still encoding).
  // Timestamps never go backwards.
  async grab(maxPixels) {
    const video = this.video;
    if (this.encoding || video.readyState < 2 || !video.videoWidth || this.ended()) return null;
    const raw = this.mediaClock ? video.currentTime : (performance.now() - this.startedAt) / 1000;
    const timestamp = Math.max(this.lastTs, raw);
    const { width, height } = fitPixels(video.videoWidth, video.videoHeight, maxPixels);
    const canvas = this.canvas;
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").drawImage(video, 0, 0, width, height);
    this.encoding = true;
    try {
      const blob = await new Promise((done) => canvas.toBlob(done, "image/jpeg", INPUT_JPEG_QUALITY));
      if (!blob) return null;
      this.lastTs = timestamp;
      return { timestamp, width, height, payload: await blob.arrayBuffer() };
    } finally {
      this.encoding = false;
    }
  }
}
