// The KVS emulator's web page: polls the JSON API under _emulator/api/, plays a stream
// through its own HLS session URL with the vendored hls.js, and watches (or feeds) a
// signaling channel's master over WebRTC with the vendored KVS WebRTC JS SDK.
// Plain ES2017, no build step.
"use strict";

(() => {
  const POLL_MS = 1500;
  const TIMELINE_FRAGMENTS = 60;
  const TABLE_FRAGMENTS = 10;
  // GetHLSStreamingSessionURL limits: Expires up to 12 h, a range up to 24 h.
  const SESSION_EXPIRES_S = 43200;
  const MAX_RANGE_MS = 24 * 3600 * 1000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = { streams: [], selected: null, mode: "LIVE", hls: null };
  const $ = (selector) => document.querySelector(selector);

  // --- formatting ---------------------------------------------------------------------

  const pad = (n, width = 2) => String(n).padStart(width, "0");
  const clock = (ms) => {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  };
  const iso = (ms) => new Date(ms).toISOString();
  const seconds = (ms) => `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const age = (ms) => (ms < 60000 ? `${seconds(Math.max(0, ms))} ago`
    : ms < 3600000 ? `${Math.round(ms / 60000)} min ago` : `${(ms / 3600000).toFixed(1)} h ago`);
  const bytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB`
    : `${(n / 1048576).toFixed(2)} MiB`);
  const rate = (bps) => (bps < 1e6 ? `${(bps / 1e3).toFixed(0)} kbit/s` : `${(bps / 1e6).toFixed(2)} Mbit/s`);
  const tagText = (tags) => tags.map((t) => `${t.name}=${t.value}`).join(", ");

  function cell(text, className, title) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    if (title) td.title = title;
    return td;
  }

  // --- API ------------------------------------------------------------------------------

  async function getJson(url, options) {
    const response = await fetch(url, options);
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!response.ok) {
      const message = (body && (body.message || body.Message)) || text || response.statusText;
      const type = response.headers.get("x-amzn-ErrorType");
      throw new Error(type ? `${type}: ${message}` : message);
    }
    return body;
  }

  // --- streams ------------------------------------------------------------------------

  function renderStreams(data) {
    const tbody = $("#streams tbody");
    const rows = data.streams.map((stream) => {
      const tr = document.createElement("tr");
      tr.dataset.stream = stream.name;
      if (stream.name === state.selected) tr.className = "selected";
      const nameCell = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "name";
      button.textContent = stream.name;
      button.title = stream.arn;
      nameCell.append(button);
      const last = stream.last_fragment;
      tr.append(
        nameCell,
        cell(stream.status, `status-${stream.status}`),
        cell(stream.retention_hours ? `${stream.retention_hours} h` : "0 h (live only)"),
        cell(String(stream.fragment_count), "num"),
        last ? cell(age(data.now_ms - last.server_timestamp_ms), "", iso(last.server_timestamp_ms))
          : cell("none"),
        cell(rate(stream.data_rate_bps), "num", `over the last ${data.data_rate_window_ms / 1000} s`),
      );
      tr.addEventListener("click", () => select(stream.name));
      return tr;
    });
    tbody.replaceChildren(...rows);
    $("#streams-empty").hidden = data.streams.length > 0;
    $("#streams-truncated").hidden = !data.truncated;
  }

  function select(name) {
    state.selected = name;
    for (const tr of document.querySelectorAll("#streams tbody tr")) {
      tr.classList.toggle("selected", tr.dataset.stream === name);
    }
    play();
    refreshFragments();
  }

  // --- player -------------------------------------------------------------------------

  function setStatus(text, isError = false) {
    const status = $("#player-status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function stopPlayer() {
    if (state.hls) {
      state.hls.destroy();
      state.hls = null;
    }
    const video = $("#video");
    video.removeAttribute("src");
    video.load();
  }

  function sessionRequest(stream) {
    const body = { StreamName: stream.name, PlaybackMode: state.mode, Expires: SESSION_EXPIRES_S };
    if (state.mode === "ON_DEMAND") {
      if (!stream.first_fragment) throw new Error(`${stream.name} has no fragments yet.`);
      // Every fragment kept (at most 24 h); the end must be in the past on the server's
      // clock, so it is taken from the newest fragment's server timestamp.
      const end = stream.last_fragment.server_timestamp_ms;
      const start = Math.max(stream.first_fragment.server_timestamp_ms, end - MAX_RANGE_MS + 1);
      body.HLSFragmentSelector = {
        FragmentSelectorType: "SERVER_TIMESTAMP",
        TimestampRange: { StartTimestamp: start / 1000, EndTimestamp: (end + 1) / 1000 },
      };
    }
    return body;
  }

  async function play() {
    stopPlayer();
    const stream = state.streams.find((s) => s.name === state.selected);
    if (!stream) return;
    const mode = state.mode;
    $("#player-title").textContent = `${stream.name} · ${mode}`;
    setStatus(`Opening an HLS session (${mode})…`);
    let url;
    try {
      const answer = await getJson("_emulator/api/hls-session", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(sessionRequest(stream)),
      });
      url = answer.HLSStreamingSessionURL;
    } catch (error) {
      // LIVE needs a fragment in the last 30 s; a stream that stopped still plays ON_DEMAND.
      const hint = mode === "LIVE" && stream.fragment_count ? " Try ON_DEMAND." : "";
      setStatus(`GetHLSStreamingSessionURL failed: ${error.message}${hint}`, true);
      return;
    }
    if (state.selected !== stream.name || state.mode !== mode) return; // clicked again meanwhile
    const video = $("#video");
    if (window.Hls && window.Hls.isSupported()) {
      const hls = new window.Hls();
      state.hls = hls;
      hls.on(window.Hls.Events.ERROR, (_event, data) => {
        if (data.fatal) {
          const detail = data.response && data.response.text ? ` (${data.response.text})` : "";
          setStatus(`Playback stopped: ${data.type} ${data.details}${detail}`, true);
        }
      });
      hls.on(window.Hls.Events.MANIFEST_PARSED, () => {
        video.play().catch((error) => setStatus(`Press play (${error.message})`));
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url; // Safari plays HLS natively
      video.play().catch((error) => setStatus(`Press play (${error.message})`));
    } else {
      setStatus("This browser cannot play HLS (no Media Source Extensions).", true);
      return;
    }
    video.onplaying = () => setStatus(`Playing ${stream.name} (${mode}) from ${url.split("?")[0]}`);
  }

  for (const button of document.querySelectorAll(".modes button")) {
    button.addEventListener("click", () => {
      state.mode = button.dataset.mode;
      for (const other of document.querySelectorAll(".modes button")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      if (state.selected) play();
    });
  }

  // --- fragments ----------------------------------------------------------------------

  function renderTimeline(fragments) {
    const svg = $("#timeline");
    if (!fragments.length) {
      svg.replaceChildren();
      $("#timeline-start").textContent = $("#timeline-end").textContent = "";
      return;
    }
    const begin = Math.min(...fragments.map((f) => f.producer_timestamp_ms));
    const end = Math.max(...fragments.map((f) => f.producer_timestamp_ms + f.duration_ms));
    const scale = 1000 / Math.max(1, end - begin);
    const shapes = [];
    fragments.forEach((f, i) => {
      const rect = document.createElementNS(SVG_NS, "rect");
      rect.setAttribute("class", i % 2 ? "fragment alt" : "fragment");
      rect.setAttribute("x", String((f.producer_timestamp_ms - begin) * scale));
      rect.setAttribute("width", String(Math.max(1, f.duration_ms * scale)));
      rect.setAttribute("y", "8");
      rect.setAttribute("height", "48");
      rect.dataset.fragment = f.fragment_number;
      const title = document.createElementNS(SVG_NS, "title");
      title.textContent = [
        `fragment ${f.fragment_number}`,
        `producer ${iso(f.producer_timestamp_ms)}`,
        `server ${iso(f.server_timestamp_ms)}`,
        `${seconds(f.duration_ms)}, ${bytes(f.size)}`,
        ...f.tags.map((t) => `${t.name} = ${t.value}`),
      ].join("\n");
      rect.append(title);
      shapes.push(rect);
      if (f.tags.length) {
        const mark = document.createElementNS(SVG_NS, "rect");
        mark.setAttribute("class", "tag-mark");
        mark.setAttribute("x", String((f.producer_timestamp_ms - begin) * scale));
        mark.setAttribute("width", String(Math.max(1, f.duration_ms * scale)));
        mark.setAttribute("y", "0");
        mark.setAttribute("height", "6");
        shapes.push(mark);
      }
    });
    svg.replaceChildren(...shapes);
    $("#timeline-start").textContent = clock(begin);
    $("#timeline-end").textContent = clock(end);
  }

  function renderFragmentTable(fragments) {
    const rows = fragments.slice(-TABLE_FRAGMENTS).reverse().map((f) => {
      const tr = document.createElement("tr");
      tr.dataset.fragment = f.fragment_number;
      tr.append(
        cell(`…${f.fragment_number.slice(-12)}`, "", f.fragment_number),
        cell(clock(f.producer_timestamp_ms), "", iso(f.producer_timestamp_ms)),
        cell(clock(f.server_timestamp_ms), "", iso(f.server_timestamp_ms)),
        cell(seconds(f.duration_ms), "num"),
        cell(bytes(f.size), "num"),
        cell(tagText(f.tags), "tags"),
      );
      return tr;
    });
    $("#fragments tbody").replaceChildren(...rows);
  }

  async function refreshFragments() {
    const name = state.selected;
    if (!name) return;
    const query = `stream=${encodeURIComponent(name)}&limit=${TIMELINE_FRAGMENTS}`;
    const data = await getJson(`_emulator/api/fragments?${query}`);
    if (name !== state.selected) return;
    $("#fragments-stream").textContent = `${name}: the latest ${data.fragments.length}`;
    renderTimeline(data.fragments);
    renderFragmentTable(data.fragments);
  }

  // --- WebRTC -------------------------------------------------------------------------

  // The SDK signs its wss:// URL with SigV4 itself: these placeholders are accepted by an
  // emulator that does not verify signatures (the default; not with --verify-sigv4).
  const RTC_CREDENTIALS = {
    accessKeyId: "AKIDEMULATORWEBPAGE",
    secretAccessKey: "emulator-web-page-placeholder-secret",
  };
  // Offers and answers are sent once ICE gathering is complete (every host candidate in
  // the SDP) or after this long; later candidates are still trickled.
  const ICE_GATHER_MS = 2000;
  const rtc = { session: null };

  function setRtcStatus(text, isError = false) {
    const status = $("#rtc-status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function renderChannels(data) {
    const active = rtc.session ? rtc.session.channel : null;
    const rows = data.channels.map((channel) => {
      const tr = document.createElement("tr");
      tr.dataset.channel = channel.name;
      if (channel.name === active) tr.className = "selected";
      const name = cell(channel.name, "", channel.arn);
      const actions = document.createElement("td");
      const watchButton = document.createElement("button");
      watchButton.type = "button";
      watchButton.className = "watch";
      watchButton.textContent = "Watch";
      watchButton.title = "View the master live (role VIEWER)";
      watchButton.addEventListener("click", () => watch(channel));
      const cameraButton = document.createElement("button");
      cameraButton.type = "button";
      cameraButton.className = "camera";
      cameraButton.textContent = "Send camera";
      cameraButton.title = "Be the channel's master with this browser's camera (role MASTER)";
      cameraButton.addEventListener("click", () => sendCamera(channel));
      actions.append(watchButton, cameraButton);
      tr.append(
        name,
        cell(channel.master_connected ? "connected" : "none"),
        cell(String(channel.viewers), "num"),
        cell(channel.storage_status, "", channel.storage_stream_arn || ""),
        actions,
      );
      return tr;
    });
    $("#channels tbody").replaceChildren(...rows);
    $("#channels-empty").hidden = data.channels.length > 0;
    $("#channels-truncated").hidden = !data.truncated;
  }

  async function signalingEndpoint(arn, role) {
    const answer = await getJson("_emulator/api/signaling-endpoint", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        ChannelARN: arn,
        SingleMasterChannelEndpointConfiguration: { Protocols: ["WSS"], Role: role },
      }),
    });
    const found = answer.ResourceEndpointList.find((e) => e.Protocol === "WSS");
    if (!found || !found.ResourceEndpoint.startsWith("wss://")) {
      throw new Error("the emulator has no wss:// signaling endpoint (install the 'webrtc' extra)");
    }
    return found.ResourceEndpoint;
  }

  const regionOf = (arn) => arn.split(":")[3];

  function iceGathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") { resolve(); return; }
      const timer = setTimeout(resolve, ICE_GATHER_MS);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  function stopRtc() {
    const session = rtc.session;
    rtc.session = null;
    if (session) {
      session.closed = true;
      if (session.client) session.client.close();
      for (const pc of session.peers.values()) pc.close();
      if (session.stream) session.stream.getTracks().forEach((track) => track.stop());
    }
    const video = $("#rtc-video");
    video.srcObject = null;
    delete video.dataset.firstFrameMs;
    $("#rtc-stop").hidden = true;
    for (const tr of document.querySelectorAll("#channels tbody tr")) tr.classList.remove("selected");
  }

  function startSession(channel, role) {
    stopRtc();
    const session = {
      channel: channel.name, role, peers: new Map(), client: null, stream: null,
      closed: false, started: performance.now(),
    };
    rtc.session = session;
    for (const tr of document.querySelectorAll("#channels tbody tr")) {
      tr.classList.toggle("selected", tr.dataset.channel === channel.name);
    }
    $("#rtc-title").textContent = `${channel.name} · ${role}`;
    $("#rtc-stop").hidden = false;
    return session;
  }

  function makeClient(session, channel, endpoint, role, clientId) {
    if (!window.KVSWebRTC) throw new Error("the KVS WebRTC JS SDK did not load");
    const client = new window.KVSWebRTC.SignalingClient({
      channelARN: channel.arn,
      channelEndpoint: endpoint,
      role: window.KVSWebRTC.Role[role],
      clientId,
      region: regionOf(channel.arn),
      credentials: RTC_CREDENTIALS,
      systemClockOffset: 0,
    });
    session.client = client;
    client.on("error", (error) => {
      if (!session.closed) setRtcStatus(`Signaling error: ${error.message || error}`, true);
    });
    client.on("statusResponse", (status) => {
      if (!session.closed) setRtcStatus(`Signaling refused a message: ${JSON.stringify(status)}`, true);
    });
    client.on("close", () => {
      if (!session.closed) setRtcStatus(`Signaling to ${endpoint} closed.`, true);
    });
    return client;
  }

  async function watch(channel) {
    const session = startSession(channel, "VIEWER");
    setRtcStatus(`Connecting to ${channel.name} as a viewer…`);
    const video = $("#rtc-video");
    try {
      const endpoint = await signalingEndpoint(channel.arn, "VIEWER");
      if (rtc.session !== session) return;
      const clientId = `web-page-${Math.random().toString(36).slice(2, 12)}`;
      const client = makeClient(session, channel, endpoint, "VIEWER", clientId);
      const pc = new RTCPeerConnection({ iceServers: [] });
      session.peers.set("master", pc);
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addEventListener("track", (event) => {
        if (session.closed || event.track.kind !== "video") return;
        video.srcObject = event.streams[0] || new MediaStream([event.track]);
        video.play().catch((error) => setRtcStatus(`Press play (${error.message})`));
      });
      pc.addEventListener("connectionstatechange", () => {
        if (session.closed) return;
        if (pc.connectionState === "failed" || pc.connectionState === "disconnected") {
          setRtcStatus(`The connection to the master of ${channel.name} is ${pc.connectionState}.`, true);
        }
      });
      video.onplaying = () => {
        if (session.closed) return;
        const ms = Math.round(performance.now() - session.started);
        video.dataset.firstFrameMs = String(ms);
        setRtcStatus(`Watching ${channel.name} live (first frame after ${ms} ms, ` +
          `${video.videoWidth}x${video.videoHeight}).`);
      };
      client.on("open", async () => {
        try {
          await pc.setLocalDescription(await pc.createOffer());
          await iceGathered(pc);
          if (session.closed) return;
          client.sendSdpOffer(pc.localDescription);
          setRtcStatus(`Offer sent to the master of ${channel.name}; waiting for its answer…`);
        } catch (error) {
          setRtcStatus(`Cannot make an offer: ${error.message}`, true);
        }
      });
      client.on("sdpAnswer", async (answer) => {
        try {
          await pc.setRemoteDescription(answer);
        } catch (error) {
          setRtcStatus(`The master's answer was refused: ${error.message}`, true);
        }
      });
      client.on("iceCandidate", (candidate) => {
        pc.addIceCandidate(candidate).catch((error) => setRtcStatus(`ICE candidate: ${error.message}`, true));
      });
      client.open();
    } catch (error) {
      if (rtc.session === session) setRtcStatus(`Cannot watch ${channel.name}: ${error.message}`, true);
    }
  }

  async function sendCamera(channel) {
    const session = startSession(channel, "MASTER");
    setRtcStatus(`Opening the camera for ${channel.name}…`);
    const video = $("#rtc-video");
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      if (rtc.session !== session) { stream.getTracks().forEach((track) => track.stop()); return; }
      session.stream = stream;
      video.srcObject = stream; // the local preview
      const endpoint = await signalingEndpoint(channel.arn, "MASTER");
      if (rtc.session !== session) return;
      const client = makeClient(session, channel, endpoint, "MASTER", undefined);
      client.on("open", () => setRtcStatus(`Master of ${channel.name}: waiting for viewers…`));
      client.on("sdpOffer", async (offer, viewerId) => {
        try {
          const old = session.peers.get(viewerId);
          if (old) old.close();
          const pc = new RTCPeerConnection({ iceServers: [] });
          session.peers.set(viewerId, pc);
          // The offer first, so the tracks go on the viewer's recvonly transceivers.
          await pc.setRemoteDescription(offer);
          for (const track of stream.getTracks()) pc.addTrack(track, stream);
          await pc.setLocalDescription(await pc.createAnswer());
          await iceGathered(pc);
          if (session.closed) return;
          client.sendSdpAnswer(pc.localDescription, viewerId);
          setRtcStatus(`Master of ${channel.name}: sending the camera to ${session.peers.size} viewer(s).`);
        } catch (error) {
          setRtcStatus(`Cannot answer viewer ${viewerId}: ${error.message}`, true);
        }
      });
      client.on("iceCandidate", (candidate, viewerId) => {
        const pc = session.peers.get(viewerId);
        if (pc) pc.addIceCandidate(candidate).catch((error) => setRtcStatus(`ICE candidate: ${error.message}`, true));
      });
      client.open();
    } catch (error) {
      if (rtc.session === session) setRtcStatus(`Cannot send the camera to ${channel.name}: ${error.message}`, true);
    }
  }

  $("#rtc-stop").addEventListener("click", () => {
    stopRtc();
    setRtcStatus("Stopped.");
  });

  async function refreshChannels() {
    try {
      renderChannels(await getJson("_emulator/api/channels"));
    } catch (error) {
      $("#channels-empty").hidden = false;
      $("#channels-empty").textContent = `No signaling channels: ${error.message}`;
    }
  }

  // --- polling ------------------------------------------------------------------------

  async function refresh() {
    const connection = $("#connection");
    try {
      const data = await getJson("_emulator/api/streams");
      state.streams = data.streams;
      renderStreams(data);
      await refreshFragments();
      await refreshChannels();
      connection.textContent = `updated ${clock(data.now_ms)}`;
      connection.classList.remove("error");
    } catch (error) {
      connection.textContent = `cannot reach the emulator: ${error.message}`;
      connection.classList.add("error");
    } finally {
      setTimeout(refresh, POLL_MS);
    }
  }

  refresh();
})();
