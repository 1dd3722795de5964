// The page's only script: live parts that refresh themselves, copy buttons, the player that
// follows the text, and uploads with progress. No library, nothing loaded from elsewhere; the
// server renders (and escapes) every piece of HTML this script puts in the page.
"use strict";

(() => {
  const REFRESH_MS = 2000;

  const csrfToken = () => {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  };

  // --- Live parts: [data-live] is re-fetched with ?live=1 and replaced when it changed ---

  function startLive(region) {
    const url = new URL(region.dataset.live || location.pathname + location.search, location.href);
    url.searchParams.set("live", "1");
    let busy = false;
    let last = null;
    const timer = setInterval(async () => {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(url, { credentials: "same-origin" });
        if (!response.ok) return;
        const html = await response.text();
        if (html === last) return;
        last = html;
        const fresh = document.createElement("template");
        fresh.innerHTML = html;
        if (fresh.content.querySelector("[data-final]")) {
          if (region.hasAttribute("data-reload-when-final")) {
            clearInterval(timer);
            location.reload();
            return;
          }
          clearInterval(timer);
        }
        region.replaceChildren(fresh.content);
      } catch (error) {
        // The page process restarted or the network dropped: try again next time.
      } finally {
        busy = false;
      }
    }, REFRESH_MS);
  }

  // --- Copy buttons ---

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (error) {
      // Plain http on a LAN is not a "secure context": fall back to a selection.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      const done = document.execCommand("copy");
      area.remove();
      return done;
    }
  }

  async function copyFrom(button) {
    const status = document.querySelector(".copied");
    let text;
    if (button.dataset.copyTarget) {
      // As the .txt has it: the paragraphs a blank line apart, a newline at the end.
      const target = document.querySelector(button.dataset.copyTarget);
      const paragraphs = [...target.querySelectorAll("[data-paragraph]")].map((p) => p.textContent);
      text = paragraphs.length ? paragraphs.join("\n\n") + "\n" : "";
    } else {
      const response = await fetch(button.dataset.copyUrl, { credentials: "same-origin" });
      text = await response.text();
    }
    const copied = await copyText(text);
    if (status) status.textContent = copied ? "Copied." : "Could not copy: select the text instead.";
  }

  // --- The player: the current segment (and word) highlighted, times that seek ---

  function followPlayer(player) {
    const segments = [...document.querySelectorAll(".segments > li[data-start]")];
    const words = [...document.querySelectorAll(".segments .word[data-start]")];
    let current = null;
    let currentWord = null;
    player.addEventListener("timeupdate", () => {
      const now = player.currentTime;
      const found = segments.find(
        (item) => now >= Number(item.dataset.start) && now < Number(item.dataset.end),
      );
      if (found !== current) {
        if (current) current.removeAttribute("aria-current");
        if (found) found.setAttribute("aria-current", "true");
        current = found || null;
      }
      const word = words.filter((item) => Number(item.dataset.start) <= now).pop() || null;
      if (word !== currentWord) {
        if (currentWord) currentWord.classList.remove("spoken");
        if (word && found && found.contains(word)) word.classList.add("spoken");
        currentWord = word;
      }
    });
    document.addEventListener("click", (event) => {
      const button = event.target.closest("[data-seek]");
      if (!button) return;
      player.currentTime = Number(button.dataset.seek);
      player.play();
    });
    const start = new URLSearchParams(location.search).get("t");
    if (start !== null) {
      const seek = () => { player.currentTime = Number(start); };
      if (player.readyState >= 1) seek();
      else player.addEventListener("loadedmetadata", seek, { once: true });
    }
  }

  // --- Uploads: each file streamed as the request body, with progress ---

  function sendFile(file, folder, progress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      const query = new URLSearchParams({ folder: folder, name: file.name });
      request.open("POST", "/upload?" + query.toString());
      request.setRequestHeader("X-CSRF-Token", csrfToken());
      request.setRequestHeader("Content-Type", "application/octet-stream");
      request.responseType = "json";
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) progress(event.loaded / event.total);
      });
      request.addEventListener("load", () => {
        const answer = request.response || {};
        if (request.status === 200) resolve(answer);
        else reject(new Error(answer.error || "the page answered " + request.status));
      });
      request.addEventListener("error", () => reject(new Error("the connection failed")));
      request.send(file);
    });
  }

  function setUpUpload(form) {
    const input = form.querySelector("#file");
    const drop = form.querySelector("#drop");
    const bar = form.querySelector("#upload-progress");
    const message = form.querySelector("#upload-message");
    const limit = Number(form.dataset.maxBytes);
    let dropped = null;

    for (const name of ["dragenter", "dragover"]) {
      drop.addEventListener(name, (event) => {
        event.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const name of ["dragleave", "drop"]) {
      drop.addEventListener(name, () => drop.classList.remove("over"));
    }
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      dropped = [...event.dataTransfer.files];
      input.required = false;
      message.textContent = dropped.map((file) => file.name).join(", ") + " ready to upload.";
    });
    input.addEventListener("change", () => { dropped = null; });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const files = dropped || [...input.files];
      if (!files.length) {
        message.textContent = "Choose a recording first.";
        return;
      }
      const tooLarge = files.find((file) => file.size > limit);
      if (tooLarge) {
        message.textContent = tooLarge.name + " is larger than the limit.";
        return;
      }
      const folder = form.querySelector("#folder").value;
      const follow = new URLSearchParams();
      bar.hidden = false;
      try {
        for (const [index, file] of files.entries()) {
          message.textContent = "Uploading " + file.name + "…";
          const answer = await sendFile(file, folder, (share) => {
            bar.value = Math.round(100 * (index + share) / files.length);
          });
          if (!follow.has("since")) follow.set("since", answer.since);
          follow.append("file", answer.file);
        }
      } catch (error) {
        message.textContent = "Upload failed: " + error.message;
        if (!follow.has("file")) return;
      }
      location.assign("/follow?" + follow.toString());
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-live]").forEach(startLive);
    document.addEventListener("click", (event) => {
      const button = event.target.closest("[data-copy-target], [data-copy-url]");
      if (button) copyFrom(button);
    });
    const player = document.getElementById("player");
    if (player) followPlayer(player);
    const upload = document.getElementById("upload");
    if (upload) setUpUpload(upload);
  });
})();
