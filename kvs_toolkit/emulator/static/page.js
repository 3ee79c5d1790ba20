// The KVS emulator's web page: polls the JSON API under _emulator/api/, plays a stream
// through its own HLS session URL with the vendored hls.js. Plain ES2017, no build step.
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

  // --- polling ------------------------------------------------------------------------

  async function refresh() {
    const connection = $("#connection");
    try {
      const data = await getJson("_emulator/api/streams");
      state.streams = data.streams;
      renderStreams(data);
      await refreshFragments();
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
