// The chat page of `affect-llm serve`: pick or record a clip, ask, watch the answer stream, then read
// its labels, explanation and per-channel evidence. It speaks the same OpenAI-compatible API as any
// client (POST /v1/chat/completions with stream: true) and shows every error it gets.
"use strict";

// `conversation` counts conversations: an answer that arrives after the clip or the conversation
// changed belongs to none on screen and is dropped. `controller` aborts the answer being streamed.
const state = { model: null, media: null, history: [], busy: false, recorder: null, conversation: 0, controller: null };
const $ = (id) => document.getElementById(id);
const CHANNELS = [["audio", "Voice"], ["video", "Face"], ["text", "Words"]];

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorMessage(response) {
  // The server answers refusals as {"error": {"message": ...}}; anything else is shown as it came.
  const text = await response.text();
  try {
    return `${response.status}: ${JSON.parse(text).error.message}`;
  } catch (_) {
    return `${response.status}: ${text || response.statusText}`;
  }
}

async function connect() {
  try {
    const health = await (await fetch("/health")).json();
    $("api-key-row").hidden = !health.auth_required;
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const card = (await response.json()).data[0];
    state.model = card.id;
    $("model-info").textContent =
      `${card.id} · reads ${card.modalities.join(", ")} · streams ${card.streaming}`;
    showError("");
  } catch (error) {
    $("model-info").textContent = "not connected";
    showError(`Cannot reach the model: ${error.message}`);
  }
}

// ---- the clip ---------------------------------------------------------------------------------
function readDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function kindOf(type) {
  for (const kind of ["video", "audio", "image"]) if (type.startsWith(`${kind}/`)) return kind;
  return null;
}

function contentPart(kind, dataUrl, name) {
  if (kind === "audio") {
    const format = (name.split(".").pop() || "wav").toLowerCase();
    // The payload follows ";base64,": a type's own parameters (codecs=vp8,opus) may hold commas.
    return { type: "input_audio", input_audio: { data: dataUrl.slice(dataUrl.indexOf(";base64,") + 8), format } };
  }
  return kind === "image"
    ? { type: "image_url", image_url: { url: dataUrl } }
    : { type: "video_url", video_url: { url: dataUrl } };
}

async function useMedia(blob, name) {
  const kind = kindOf(blob.type);
  if (!kind) {
    showError(`${name}: cannot tell whether this is a video, audio or an image (type "${blob.type}")`);
    return;
  }
  if (kind === "audio" && blob.type.includes("webm")) {
    // WebM sound (a browser's own recordings, .weba) is sent as WAV, as recordings are: the server
    // reads a WebM container as video.
    blob = await wavFromRecording(blob);
    name = `${name.replace(/\.[^.]*$/, "")}.wav`;
  }
  const dataUrl = await readDataUrl(blob);
  state.media = { part: contentPart(kind, dataUrl, name), name, kind };
  const preview = $("preview");
  preview.replaceChildren();
  const element = document.createElement(kind === "image" ? "img" : kind);
  element.src = dataUrl;
  if (kind !== "image") element.controls = true;
  else element.alt = name;
  const caption = document.createElement("p");
  caption.className = "meta";
  caption.textContent = `${name} (${kind}, ${(blob.size / 1024).toFixed(0)} KB)`;
  preview.append(element, caption);
  newConversation();  // one conversation is about one clip
  $("transcript").value = "";  // the words were the previous clip's
  showError("");
}

// ---- recording ------------------------------------------------------------------------------------
async function wavFromRecording(blob) {
  // Recorders give webm/opus; the page sends 16 kHz mono WAV, which every server-side decoder reads.
  const context = new AudioContext();
  const decoded = await context.decodeAudioData(await blob.arrayBuffer());
  await context.close();
  const frames = Math.ceil(decoded.duration * 16000);
  const offline = new OfflineAudioContext(1, frames, 16000);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const samples = (await offline.startRendering()).getChannelData(0);
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, 16000, true); view.setUint32(28, 32000, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, x)) * 0x7fff, true));
  return new Blob([view], { type: "audio/wav" });
}

function recordingControls(recording) {
  $("record-audio").disabled = recording;
  $("record-video").disabled = recording;
  $("stop-recording").hidden = !recording;
}

async function startRecording(withVideo) {
  if (state.recorder) return;  // one recording at a time: a second would keep its microphone open
  recordingControls(true);
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: withVideo });
    const chunks = [];
    const recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (event) => chunks.push(event.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((track) => track.stop());
      const blob = new Blob(chunks, { type: recorder.mimeType });
      try {
        if (withVideo) await useMedia(new Blob([blob], { type: "video/webm" }), "recording.webm");
        else await useMedia(await wavFromRecording(blob), "recording.wav");
      } catch (error) {
        showError(`The recording could not be used: ${error.message}`);
      }
    };
    recorder.start();
    state.recorder = recorder;
  } catch (error) {
    recordingControls(false);
    showError(`Cannot record: ${error.message}`);
  }
}

function stopRecording() {
  if (state.recorder) state.recorder.stop();
  state.recorder = null;
  recordingControls(false);
}

// ---- the conversation ---------------------------------------------------------------------------
function newConversation() {
  state.conversation += 1;
  if (state.controller) state.controller.abort();  // its answer would belong to no conversation
  state.history = [];
  $("conversation").replaceChildren();
}

function addTurn(role, text) {
  const turn = document.createElement("div");
  turn.className = `turn ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "you" : "model";
  const body = document.createElement("div");
  body.className = "raw";
  body.textContent = text;
  turn.append(who, body);
  $("conversation").append(turn);
  return turn;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderAnswer(turn, affect) {
  // Labels, explanation and the evidence of each channel, as separate parts; a text that is not a
  // structured answer is said to be one, with the reason, never turned into labels.
  const answer = affect.answer;
  const absent = new Set(affect.absent_channels || []);
  const parts = element("div", "structured");
  if (answer.parse_status !== "ok") {
    parts.append(element("p", "parse-error", `Not a structured answer: ${answer.error}`));
  } else {
    if (answer.labels && answer.labels.length) {
      parts.append(element("h3", "", "Labels"));
      const list = element("ul", "labels");
      answer.labels.forEach((label) => list.append(element("li", "label", label)));
      parts.append(list);
    }
    if (answer.explanation) {
      parts.append(element("h3", "", "Explanation"), element("p", "explanation", answer.explanation));
    }
    if (answer.evidence) {
      parts.append(element("h3", "", "Evidence"));
      const list = element("dl", "evidence");
      for (const [key, name] of CHANNELS) {
        const value = answer.evidence[key];
        // Only a channel the clip lacks is "not in this clip"; a null for one it has is the model's.
        const missing = absent.has(key) ? "not in this clip" : "no evidence given";
        const detail = element("dd", value ? "" : absent.has(key) ? "absent" : "none", value || missing);
        detail.dataset.channel = key;
        list.append(element("dt", "", name), detail);
      }
      parts.append(list);
    }
  }
  const words = affect.transcript;
  if (words) {
    const source = words.recognised ? `recognised by ${words.source}` : "given with the clip";
    const said = words.text ? `"${words.text}"` : `nothing (${words.dropped || "no speech"})`;
    parts.append(element("p", "meta", `Words ${source}: ${said}`));
  }
  parts.append(element("p", "meta", `Read: ${affect.modalities.join(", ") || "text only"}`));
  turn.append(parts);
}

function requestBody(question) {
  const first = state.history.length === 0;
  const content = [];
  if (first && state.media) content.push(state.media.part);
  if (question) content.push({ type: "text", text: question });
  const messages = [...state.history, { role: "user", content }];
  const body = { model: state.model, messages, stream: true };
  const transcript = $("transcript").value.trim();
  if (transcript) body.transcript = transcript;
  return body;
}

async function readStream(response, onText, onEnd) {
  // Server-sent events: "data: {...}" lines separated by blank lines, closed by "data: [DONE]".
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) onText(choice.delta.content);
      if (choice && choice.finish_reason) onEnd(chunk);
    }
  }
}

function answering(busy) {
  state.busy = busy;
  $("ask").disabled = busy;
  $("stop-answer").hidden = !busy;
}

async function ask(event) {
  event.preventDefault();
  if (state.busy) return;
  const question = $("question").value.trim();
  if (!state.media && !question) {
    showError("Pick or record a clip, or ask a question.");
    return;
  }
  if (state.history.length && !question) {
    // The task (labels, explanation, evidence) is what a clip's first turn asks; later turns are questions.
    showError("Ask a question about the clip, or press New conversation for its labels, explanation and evidence.");
    return;
  }
  if (!state.model) await connect();  // the API key may have been typed just now
  if (!state.model) return;
  showError("");
  const body = requestBody(question);
  const asked = addTurn("user", question || `(${state.media.name}: labels, explanation and evidence)`);
  const turn = addTurn("assistant", "");
  const raw = turn.querySelector(".raw");
  const conversation = state.conversation;
  const controller = new AbortController();
  state.controller = controller;
  answering(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    let final = null;
    await readStream(response, (piece) => { raw.textContent += piece; }, (chunk) => { final = chunk; });
    if (!final) throw new Error("the answer stream ended early");
    if (conversation !== state.conversation) return;
    renderAnswer(turn, final.affect);
    state.history = [...body.messages, { role: "assistant", content: raw.textContent }];
    $("question").value = "";
  } catch (error) {
    asked.remove();
    turn.remove();
    if (conversation !== state.conversation) return;  // a new clip or conversation replaced this one
    if (controller.signal.aborted) {
      $("question").value = question;  // stopped: nothing was added, the question can be asked again
    } else {
      showError(`The model could not answer: ${error.message}`);
    }
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      answering(false);
    }
  }
}

$("media-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) useMedia(file, file.name).catch((error) => showError(error.message));
});
$("record-audio").addEventListener("click", () => startRecording(false));
$("record-video").addEventListener("click", () => startRecording(true));
$("stop-recording").addEventListener("click", stopRecording);
$("new-conversation").addEventListener("click", newConversation);
$("stop-answer").addEventListener("click", () => state.controller && state.controller.abort());
$("ask-form").addEventListener("submit", ask);
$("api-key").addEventListener("change", connect);
connect();
